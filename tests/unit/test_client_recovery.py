"""Which failures leave a step's outcome unknown, and which the retry policy resends."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import status_pb2

from seqinfer.client import errors, retry
from seqinfer.client.retry import RetryPolicy, call_with_retry
from seqinfer.client.session import outcome_unknown


def _transport(code: grpc.StatusCode) -> errors.SeqinferError:
    """An error gRPC made itself: a status without seqinfer's ErrorInfo."""
    return errors.from_status(status_pb2.Status(code=code.value[0], message="x"))


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_transport_failures_leave_the_outcome_unknown(code):
    assert outcome_unknown(_transport(code))


@pytest.mark.parametrize(
    "error",
    [
        errors.DeadlineExceeded("server: passed in the queue, not applied"),
        errors.QueueFull("refused"),
        errors.Draining("refused"),
        errors.StepGap("not applied"),
        errors.InvalidInput("bad"),
        errors.SessionNotFound("gone"),
    ],
)
def test_errors_with_a_seqinfer_reason_say_nothing_was_applied(error):
    assert not outcome_unknown(error)


def test_cancelled_by_grpc_and_queue_full_are_retried():
    policy = RetryPolicy()
    assert policy.should_retry(_transport(grpc.StatusCode.CANCELLED), 1)
    assert policy.should_retry(errors.QueueFull("busy"), 1)
    assert not policy.should_retry(_transport(grpc.StatusCode.RESOURCE_EXHAUSTED), 1)


class _Clock:
    """Stands in for the ``time`` module inside retry.py; sleeping overshoots."""

    def __init__(self, overshoot: float) -> None:
        self.now = 0.0
        self.overshoot = overshoot

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.overshoot


def test_a_deadline_reached_while_backing_off_reports_the_last_attempts_error(monkeypatch):
    clock = _Clock(overshoot=0.2)
    monkeypatch.setattr(retry, "time", clock)
    lost = _transport(grpc.StatusCode.UNAVAILABLE)

    def attempt(n: int, timeout: float | None) -> None:
        raise lost

    # A 0.5 s budget: the 0.4 s backoff fits, but the sleep ends past the deadline.
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.4, jitter=0.0)
    with pytest.raises(errors.SeqinferError) as info:
        call_with_retry(attempt, policy, 0.5, idempotent=True, sleep=clock.sleep)
    assert info.value is lost and outcome_unknown(info.value)
