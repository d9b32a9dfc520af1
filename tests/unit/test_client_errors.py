"""Decoding statuses (with and without ErrorInfo) into typed exceptions; retry policy math."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from seqinfer.client import errors
from seqinfer.client.retry import Budget, RetryPolicy, call_with_retry


def rich_status(
    code: int, message: str, reason: str, domain: str = "seqinfer.v1", **md: str
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=md)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code, message=message, details=[detail])


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (code_pb2.NOT_FOUND, "SESSION_NOT_FOUND", errors.SessionNotFound),
        (code_pb2.NOT_FOUND, "SESSION_EXPIRED", errors.SessionExpired),
        (code_pb2.NOT_FOUND, "SESSION_EVICTED", errors.SessionEvicted),
        (code_pb2.ALREADY_EXISTS, "SESSION_EXISTS", errors.SessionExists),
        (code_pb2.FAILED_PRECONDITION, "STEP_GAP", errors.StepGap),
        (code_pb2.FAILED_PRECONDITION, "STEP_LIMIT", errors.StepLimit),
        (code_pb2.NOT_FOUND, "MODEL_NOT_FOUND", errors.ModelNotFound),
        (code_pb2.INVALID_ARGUMENT, "INVALID_INPUT", errors.InvalidInput),
        (code_pb2.INVALID_ARGUMENT, "TOO_LARGE", errors.TooLarge),
        (code_pb2.RESOURCE_EXHAUSTED, "QUEUE_FULL", errors.QueueFull),
        (code_pb2.RESOURCE_EXHAUSTED, "CAPACITY_FULL", errors.CapacityFull),
        (code_pb2.UNAVAILABLE, "DRAINING", errors.Draining),
        (code_pb2.DEADLINE_EXCEEDED, "DEADLINE", errors.DeadlineExceeded),
        (code_pb2.CANCELLED, "CANCELLED_BY_CLIENT", errors.Cancelled),
        (code_pb2.INTERNAL, "INTERNAL_ERROR", errors.InternalError),
    ],
)
def test_every_reason_maps_to_its_class(
    code: int, reason: str, cls: type[errors.SeqinferError]
) -> None:
    err = errors.from_status(rich_status(code, "boom", reason))
    assert type(err) is cls
    assert err.reason == reason
    assert err.code.value[0] == code
    assert err.message == "boom"
    assert str(err) == f"{reason}: boom"


def test_hierarchy_lets_callers_catch_broadly() -> None:
    assert issubclass(errors.SessionExpired, errors.SessionNotFound)
    assert issubclass(errors.SessionEvicted, errors.SessionNotFound)
    assert issubclass(errors.Draining, errors.Unavailable)
    assert issubclass(errors.QueueFull, errors.ResourceExhausted)
    assert issubclass(errors.TooLarge, errors.InvalidInput)
    assert all(issubclass(c, errors.SeqinferError) for c in (errors.StepGap, errors.ModelNotFound))


def test_metadata_fields() -> None:
    gap = errors.from_status(
        rich_status(code_pb2.FAILED_PRECONDITION, "gap", "STEP_GAP", current_step="42")
    )
    assert isinstance(gap, errors.StepGap)
    assert gap.current_step == 42
    assert gap.metadata == {"current_step": "42"}
    bad = errors.from_status(
        rich_status(code_pb2.INVALID_ARGUMENT, "bad", "INVALID_INPUT", field="inputs")
    )
    assert isinstance(bad, errors.InvalidInput)
    assert bad.field == "inputs"
    assert errors.StepGap("x").current_step is None
    limit = errors.from_status(
        rich_status(
            code_pb2.FAILED_PRECONDITION,
            "limit",
            "STEP_LIMIT",
            current_step="9007199254740991",
            max_step="9007199254740991",
        )
    )
    assert isinstance(limit, errors.StepLimit) and not isinstance(limit, errors.StepGap)
    assert limit.current_step == limit.max_step == 2**53 - 1
    assert errors.StepLimit("x").max_step is None


def test_status_without_error_info_falls_back_to_code() -> None:
    err = errors.from_status(status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down"))
    assert type(err) is errors.Unavailable
    assert err.reason == ""
    assert str(err) == "UNAVAILABLE: down"
    other = errors.from_status(status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message="no"))
    assert type(other) is errors.SeqinferError
    assert other.code is grpc.StatusCode.PERMISSION_DENIED


def test_foreign_domain_is_used_only_when_alone() -> None:
    status = rich_status(code_pb2.NOT_FOUND, "x", "SOMETHING_ELSE", domain="example.com")
    ours = error_details_pb2.ErrorInfo(reason="SESSION_NOT_FOUND", domain="seqinfer.v1")
    extra = any_pb2.Any()
    extra.Pack(ours)
    status.details.append(extra)
    assert type(errors.from_status(status)) is errors.SessionNotFound
    alone = errors.from_status(
        rich_status(code_pb2.NOT_FOUND, "x", "SOMETHING_ELSE", domain="example.com")
    )
    assert type(alone) is errors.SeqinferError and alone.reason == "SOMETHING_ELSE"


# -- retry policy ---------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=0.5, jitter=0.5)
    assert policy.backoff(1, rng=lambda: 0.0) == pytest.approx(0.1)
    assert policy.backoff(2, rng=lambda: 0.0) == pytest.approx(0.2)
    assert policy.backoff(5, rng=lambda: 0.0) == pytest.approx(0.5)
    assert policy.backoff(2, rng=lambda: 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_should_retry_by_code_reason_and_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(errors.Unavailable("x"), 1)
    assert policy.should_retry(errors.Draining("x"), 2)
    assert policy.should_retry(errors.QueueFull("x"), 1)
    assert not policy.should_retry(errors.Unavailable("x"), 3)
    assert not policy.should_retry(errors.CapacityFull("x"), 1)
    assert not policy.should_retry(errors.StepGap("x"), 1)
    assert not RetryPolicy.disabled().should_retry(errors.Unavailable("x"), 1)


def test_call_with_retry_respects_idempotence_and_budget() -> None:
    calls: list[tuple[int, float | None]] = []
    slept: list[float] = []

    def flaky(attempt: int, timeout: float | None) -> str:
        calls.append((attempt, timeout))
        if attempt < 3:
            raise errors.Unavailable("down")
        return "ok"

    policy = RetryPolicy(max_attempts=5, jitter=0.0, initial_backoff=0.01)
    assert call_with_retry(flaky, policy, None, idempotent=True, sleep=slept.append) == "ok"
    assert [a for a, _ in calls] == [1, 2, 3]
    assert slept == pytest.approx([0.01, 0.02])

    calls.clear()
    with pytest.raises(errors.Unavailable):
        call_with_retry(flaky, policy, None, idempotent=False, sleep=slept.append)
    assert len(calls) == 1

    # A backoff longer than the remaining deadline is not waited out.
    calls.clear()
    slow = RetryPolicy(max_attempts=5, jitter=0.0, initial_backoff=10.0)
    with pytest.raises(errors.Unavailable):
        call_with_retry(flaky, slow, 1.0, idempotent=True, sleep=slept.append)
    assert len(calls) == 1
    assert calls[0][1] is not None and 0 < calls[0][1] <= 1.0


def test_budget_caps_attempts() -> None:
    budget = Budget(10.0, RetryPolicy(attempt_timeout=0.5))
    assert budget.attempt_timeout() == 0.5
    assert Budget(None, RetryPolicy()).attempt_timeout() is None
    spent = Budget(0.0, RetryPolicy())
    with pytest.raises(errors.DeadlineExceeded):
        spent.attempt_timeout()
