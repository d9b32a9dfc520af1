"""Unary retries: what the client resends, when, and when it stops.

A step is resent only with its own request_id and expected_step, so a lost
reply is replayed by the server, not applied twice; calls that are not safe
to resend are not; attempts stop at the policy's limit and at the call's
deadline; a retried open adopts only an id the client chose itself.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from seqinfer.client import Client, RetryPolicy, SessionExists, Unavailable
from tests.unit.client_fake_server.fake_seqinfer import FAST_RETRY, FakeSeqinfer, X


def test_step_retry_after_lost_reply_is_replayed_not_reapplied(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    out = s.step(X)
    assert out.replayed and out.step == 1 and s.step_count == 1
    first, retry = servicer.seen("Step")
    assert retry.request_id == first.request_id and retry.expected_step == first.expected_step == 0
    assert servicer.applied == 1
    np.testing.assert_array_equal(out.outputs, X[-1] * 2)


def test_step_retry_when_server_never_got_it(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, "DRAINING")
    servicer.fail("Step", grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
    out = s.step(X)
    assert not out.replayed and out.step == 1
    assert len({r.request_id for r in servicer.seen("Step")}) == 1
    assert len(servicer.seen("Step")) == 3


def test_no_retry_without_expected_step_or_for_non_retryable(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    client.open_session("toy", "a")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Unavailable):
        client.step("a", X)  # no expected_step: a resend could apply twice
    assert len(servicer.seen("Step")) == 1
    servicer.fail("Step", grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_FULL")
    with pytest.raises(Exception) as info:
        client.step("a", X, expected_step=0)
    assert info.value.reason == "CAPACITY_FULL"  # type: ignore[attr-defined]
    assert len(servicer.seen("Step")) == 2


def test_retries_give_up_after_max_attempts(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    for _ in range(10):
        servicer.fail("ListModels", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Unavailable):
        client.list_models()
    assert len(servicer.seen("ListModels")) == FAST_RETRY.max_attempts


def test_open_retry_adopts_own_random_id(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    servicer.fail("OpenSession", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    s = client.open_session("toy")
    assert list(servicer.sessions) == [s.session_id]  # one session, not two
    # A caller-chosen id is not adopted: it may be someone else's.
    servicer.fail("OpenSession", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    with pytest.raises(SessionExists):
        client.open_session("toy", "mine")


def test_deadline_is_per_call(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    with Client(address, retry=RetryPolicy(max_attempts=100, initial_backoff=0.05, jitter=0)) as c:
        for _ in range(100):
            servicer.fail("ListModels", grpc.StatusCode.UNAVAILABLE)
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            c.list_models(timeout=0.5)
        # Retries stopped at the deadline: the 100 scripted failures, backing off
        # up to 2 s each, would take minutes. Only a generous bound on time.
        assert time.monotonic() - t0 < 10
        assert servicer.script.failures["ListModels"], "every attempt was made"
