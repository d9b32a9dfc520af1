"""CloseSession is queued behind the session's accepted work (held in the engine by a gate).

The order: requests received before CloseSession are applied and answered,
the close follows them, and its final_step includes them; a request
received after it gets SESSION_NOT_FOUND. Nothing here waits on time: the
gate holds the engine, ``wait_until`` waits for the server to reach a state.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", name="closing", seed=11)


def _x(rng: np.random.Generator, t: int) -> np.ndarray:
    return rng.standard_normal((t, 8)).astype(np.float32)


def _step(session_id: str, x: np.ndarray, **kw: object) -> pb.StepRequest:
    return pb.StepRequest(session_id=session_id, inputs=to_tensor(x), **kw)  # type: ignore[arg-type]


def _scheduler(server):
    return server.server.runtimes[0].scheduler


def _closing(server, session_id: str) -> bool:
    def check() -> bool:
        session = server.server.runtimes[0].table.by_id.get(session_id)
        return session is not None and session.close_waiter is not None

    return bool(server.run_sync(check))


def test_close_waits_for_the_step_in_the_engine_and_the_queued_one():
    rng = np.random.default_rng(0)
    first, in_flight, queued, bystander_x = _x(rng, 1), _x(rng, 3), _x(rng, 2), _x(rng, 3)
    with running_server([MODEL]) as server, stub(server.address) as s:
        for sid in ("c", "bystander"):
            s.OpenSession(pb.OpenSessionRequest(model="closing", session_id=sid))
        s.Step(_step("c", first))
        pool = ThreadPoolExecutor(4)
        with gated(server) as gate:
            held = pool.submit(s.Step, _step("c", in_flight, return_state=True))
            gate.wait_entered(1)
            behind = pool.submit(s.Step, _step("c", queued, return_state=True))
            other = pool.submit(s.Step, _step("bystander", bystander_x))
            wait_until(lambda: server.run_sync(lambda: _scheduler(server).queue_depth) == 2)
            close = pool.submit(s.CloseSession, pb.CloseSessionRequest(session_id="c"))
            wait_until(lambda: _closing(server, "c"), what="the close to be received")
            # Received after the close: refused, nothing applied.
            with pytest.raises(grpc.RpcError) as late:
                s.Step(_step("c", _x(rng, 1)))
            assert error_reason(late.value)[:2] == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            assert not close.done()  # the engine is held: the close cannot have happened
            gate.open()
            held_reply, behind_reply = held.result(60), behind.result(60)
            final = close.result(60).final_step
            other.result(60)
        pool.shutdown()
        with pytest.raises(grpc.RpcError) as gone:
            s.GetSession(pb.GetSessionRequest(session_id="c"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        bystander = s.ExportState(pb.ExportStateRequest(session_id="bystander"))
    assert (held_reply.step, behind_reply.step, final) == (4, 6, 6)
    assert not held_reply.closed and not behind_reply.closed
    _, want = reference_run(MODEL, np.concatenate([first, in_flight, queued]))
    np.testing.assert_allclose(from_tensor(behind_reply.state), want, atol=1e-5, rtol=0)
    _, want_bystander = reference_run(MODEL, bystander_x)
    assert bystander.session.step == 3
    np.testing.assert_allclose(from_tensor(bystander.state), want_bystander, atol=1e-5, rtol=0)


def test_close_of_an_idle_session_is_immediate_and_its_slot_is_clean_for_the_next():
    rng = np.random.default_rng(1)
    x = _x(rng, 4)
    with running_server([MODEL], initial_capacity=1, max_sessions=1) as server:
        with stub(server.address) as s:
            s.OpenSession(pb.OpenSessionRequest(model="closing", session_id="a"))
            s.Step(_step("a", x))
            assert s.CloseSession(pb.CloseSessionRequest(session_id="a")).final_step == 4
            # The one slot is reused: the new session starts from zeros.
            s.OpenSession(pb.OpenSessionRequest(model="closing", session_id="b"))
            reply = s.Step(_step("b", x, return_state=True))
    _, want = reference_run(MODEL, x)
    np.testing.assert_allclose(from_tensor(reply.state), want, atol=1e-5, rtol=0)


def test_two_closes_while_busy_both_get_the_final_step_and_a_stream_gets_its_reply():
    rng = np.random.default_rng(2)
    xs = [_x(rng, 2) for _ in range(3)]
    with running_server([MODEL]) as server, stub(server.address) as s:
        s.OpenSession(pb.OpenSessionRequest(model="closing", session_id="st"))
        pool = ThreadPoolExecutor(3)
        with gated(server) as gate:
            stream = s.StreamSteps(iter([_step("st", x) for x in xs]))
            gate.wait_entered(1)
            wait_until(lambda: server.run_sync(lambda: _scheduler(server).queue_depth) == 2)
            closes = [
                pool.submit(s.CloseSession, pb.CloseSessionRequest(session_id="st"))
                for _ in range(2)
            ]
            wait_until(lambda: _closing(server, "st"), what="the close to be received")
            gate.open()
            results = list(stream)
            finals = [c.result(60).final_step for c in closes]
        pool.shutdown()
    assert [r.response.step for r in results] == [2, 4, 6]
    assert not any(r.HasField("error") for r in results)
    assert finals == [6, 6]


def test_a_queued_end_step_closes_first_and_the_close_still_answers():
    rng = np.random.default_rng(3)
    with running_server([MODEL]) as server, stub(server.address) as s:
        s.OpenSession(pb.OpenSessionRequest(model="closing", session_id="e"))
        pool = ThreadPoolExecutor(3)
        with gated(server) as gate:
            held = pool.submit(s.Step, _step("e", _x(rng, 1)))
            gate.wait_entered(1)
            ending = pool.submit(s.Step, _step("e", _x(rng, 2), end=True))
            wait_until(lambda: server.run_sync(lambda: _scheduler(server).queue_depth) == 1)
            close = pool.submit(s.CloseSession, pb.CloseSessionRequest(session_id="e"))
            wait_until(lambda: _closing(server, "e"), what="the close to be received")
            gate.open()
            assert held.result(60).step == 1
            end_reply = ending.result(60)
            assert close.result(60).final_step == 3
        pool.shutdown()
    assert end_reply.closed and end_reply.step == 3
