"""The client's stream on the real server: many sessions pipelined, and refusals in flight.

A step pipelined behind a refused one expects the wrong counter and gets
STEP_GAP; one sent after the refusal came back applies.
"""

from __future__ import annotations

import numpy as np

from seqinfer.client import Client, InvalidInput, SessionNotFound, StepGap
from tests.integration.client_real_server.served import BENCH, frames, outputs
from tests.support import gated, reference_run, running_server


def test_stream_many_sessions_pipelined(client: Client) -> None:
    n_sessions, n_steps = 12, 8
    inputs = [frames(n_steps) for _ in range(n_sessions)]
    sessions = [client.open_session("bench-gru") for _ in range(n_sessions)]
    with client.stream() as stream:
        futures = [
            [stream.submit(s, inputs[i][t]) for i, s in enumerate(sessions)] for t in range(n_steps)
        ]
    for i, s in enumerate(sessions):
        want, _ = reference_run(BENCH, inputs[i])
        got = np.stack([outputs(futures[t][i].result()) for t in range(n_steps)])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert s.step_count == n_steps
        s.close()


def test_stream_step_sent_behind_a_refused_one_gets_step_gap() -> None:
    """Pipelined behind a bad item whose refusal has not come back, a step expects the
    counter after the bad one and must be refused with STEP_GAP, not applied.

    The gate holds the first step in the engine; the bad item's refusal waits
    behind it (results of one session leave in order), so `after` is sent
    before the client can know. Its own server: the gate stays installed.
    """
    x = frames(3)
    with running_server([BENCH]) as srv, gated(srv) as gate:
        with Client(srv.address, timeout=60) as c:
            s = c.open_session("bench-gru")
            with c.stream() as stream:
                ok = stream.submit(s, x[0])
                gate.wait_entered(1)
                bad = stream.submit(s, np.ones((1, 5), np.float32))
                missing = stream.submit("missing-in-stream", frames(1))
                after = stream.submit(s, x[1])
                gate.open()
            assert ok.result().step == 1
            assert isinstance(bad.exception(), InvalidInput)
            assert isinstance(missing.exception(), SessionNotFound)
            gap = after.exception()
            assert isinstance(gap, StepGap) and gap.current_step == 1
            assert s.step_count == 1
            # Neither the bad step nor `after` was applied: the next one follows `ok`.
            np.testing.assert_allclose(
                s(x[2]), reference_run(BENCH, x[[0, 2]])[0][-1], atol=1e-5, rtol=0
            )


def test_stream_step_sent_after_a_refusal_came_back_applies(client: Client) -> None:
    """Once the bad item's refusal is back, the handle is at the counter again and the
    next step expects it and applies."""
    x = frames(2)
    s = client.open_session("bench-gru")
    with client.stream() as stream:
        ok = stream.submit(s, x[0])
        bad = stream.submit(s, np.ones((1, 5), np.float32))
        assert isinstance(bad.exception(timeout=60), InvalidInput)
        assert s.step_count == 1
        after = stream.submit(s, x[1])
    assert ok.result().step == 1
    assert after.result().step == 2 and s.step_count == 2
    np.testing.assert_allclose(
        outputs(after.result()), reference_run(BENCH, x)[0][-1], atol=1e-5, rtol=0
    )
    s.close()
