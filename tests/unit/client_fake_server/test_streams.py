"""StreamSteps through the client's stream: pipelining, per-item errors, reconnects.

Replies are matched to their requests across many sessions; an item's
refusal does not end the stream; a broken stream is reopened and its
unanswered steps resent exactly once (replayed, or reported as `ReplyLost`
where the server no longer has the reply); when retries run out the stream
fails and the handle rolls back.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from seqinfer.client import (
    Client,
    InvalidInput,
    RetryPolicy,
    SessionNotFound,
    StepGap,
    Unavailable,
)
from tests.unit.client_fake_server.fake_seqinfer import FakeSeqinfer, X


def test_stream_pipelines_many_sessions(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    sessions = [client.open_session("toy") for _ in range(5)]
    with client.stream() as stream:
        futs = [
            (s, i, stream.submit(s, np.full((1, 3), i, dtype=np.float32)))
            for i in range(20)
            for s in sessions
        ]
    for s, i, fut in futs:
        out = fut.result()
        assert out.session_id == s.session_id
        np.testing.assert_array_equal(out.outputs, [2 * i] * 3)
        assert out.step == i + 1
    assert all(s.step_count == 20 for s in sessions)
    sent = servicer.seen("StreamSteps")
    for s in sessions:
        assert [r.expected_step for r in sent if r.session_id == s.session_id] == list(range(20))


def test_stream_item_errors_do_not_stop_the_stream(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    # Hold the replies until all four are sent: otherwise the bad one's refusal
    # may come back before `gap` is submitted, which then expects 1 and applies.
    servicer.script.hold_replies = threading.Event()
    with client.stream() as stream:
        ok1 = stream.submit(s, X)
        bad = stream.submit(s, np.ones((1, 5)))  # invalid: not applied
        gap = stream.submit(s, X)  # pipelined behind the bad one -> STEP_GAP
        missing = stream.submit("missing", X)
        servicer.script.hold_replies.set()
    assert [r.expected_step for r in servicer.seen("StreamSteps")[:3]] == [0, 1, 2]
    assert ok1.result().step == 1
    assert isinstance(bad.exception(), InvalidInput)
    gap_err = gap.exception()
    assert isinstance(gap_err, StepGap) and gap_err.current_step == 1
    assert isinstance(missing.exception(), SessionNotFound)
    assert s.step_count == 1  # resynced to the server's counter
    with client.stream() as stream:
        assert stream.step(s, X).step == 2


def test_stream_reconnects_and_resends_exactly_once(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    servicer.script.stream_breaks = [3, 5]
    sessions = [client.open_session("toy") for _ in range(3)]
    with client.stream() as stream:
        futs = [stream.submit(s, X) for _ in range(10) for s in sessions]
        anon = stream.submit("unsafe", X, start=True, model="toy")  # no expected_step
    results = []
    for f in futs:
        results.append(f.result(timeout=10))
    assert all(s.step_count == 10 for s in sessions)
    assert servicer.applied in (30, 31)  # 30 session steps exactly once (+ maybe the unsafe one)
    assert any(r.replayed for r in results)
    assert servicer.stream_calls == 3  # broke twice, reopened twice
    if anon.exception() is not None:
        assert isinstance(anon.exception(), Unavailable)
    per_session = {s.session_id: servicer.sessions[s.session_id].step for s in sessions}
    assert set(per_session.values()) == {10}


def test_stream_reports_applied_steps_whose_replies_cannot_be_replayed(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    servicer.script.stream_breaks = [1]
    servicer.script.stream_silent = 2  # steps 2, 3 and 4 applied, unanswered
    s = client.open_session("toy")
    with client.stream() as stream:
        futs = [stream.submit(s, X) for _ in range(5)]
    outcomes = [f.exception() or f.result() for f in futs]
    assert outcomes[0].step == 1  # type: ignore[union-attr]
    # Only a session's last reply is cached: 2 and 3 were applied, replies gone.
    assert [type(o).__name__ for o in outcomes[1:3]] == ["ReplyLost", "ReplyLost"]
    assert outcomes[1].current_step == 4  # type: ignore[union-attr]
    assert outcomes[3].replayed and outcomes[3].step == 4  # type: ignore[union-attr]
    assert outcomes[4].step == 5  # type: ignore[union-attr]
    assert servicer.applied == 5 and s.step_count == 5  # every step exactly once


def test_stream_gives_up_when_retries_run_out(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    servicer.script.stream_breaks = [0] * 10
    with Client(address, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as c:
        s = c.open_session("toy")
        stream = c.stream()
        fut = stream.submit(s, X)
        assert isinstance(fut.exception(timeout=10), Unavailable)
        with pytest.raises(Unavailable):
            stream.submit(s, X)
        stream.close()
    assert s.step_count == 0  # rolled back: the handle does not know it was applied
