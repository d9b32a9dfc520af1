"""Cancelled streams and passed deadlines leave no half-applied state.

The engine is held with a gate while a call is cancelled or its deadline
passes, so "what was in the engine" and "what was still queued" are known
exactly instead of guessed from how fast the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from seqinfer.service.guard import CallGuard
from seqinfer.service.observer import Observer
from seqinfer.service.servicer import SeqinferServicer
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import (
    EngineGate,
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    status_reason,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", hidden=64, name="c", seed=3)
T = 3


class Recorder(Observer):
    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self.finished: Counter[tuple[str, str]] = Counter()

    def request_rejected(self, model: str, reason: str) -> None:
        self.rejected[reason] += 1

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        self.finished[method, code] += 1


def _idle(server: Any) -> bool:
    scheduler = server.server.runtimes[0].scheduler
    return bool(server.run_sync(lambda: scheduler.queue_depth == 0 and scheduler.in_flight == 0))


def _queued(server: Any) -> int:
    scheduler = server.server.runtimes[0].scheduler
    return int(server.run_sync(lambda: scheduler.queue_depth))


def _step(session_id: str, x: np.ndarray) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=session_id, inputs=to_tensor(x), output_mode=pb.OUTPUT_MODE_NONE
    )


async def _cancel_with_one_step_in_the_engine(
    server: Any, gate: EngineGate, recorder: Recorder, xs: list[np.ndarray], answered: int
) -> int:
    """``answered`` steps replied to, one held in the engine, the rest queued: cancel."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        await stub.OpenSession(pb.OpenSessionRequest(model="c", session_id="victim"))
        replied = asyncio.Event()

        async def requests() -> Any:
            for x in xs[:answered]:
                yield _step("victim", x)
            await replied.wait()  # nothing of this stream is in the server now
            await asyncio.to_thread(gate.install, server)
            for x in xs[answered:]:
                yield _step("victim", x)

        call = stub.StreamSteps(requests())
        replies = 0
        for _ in range(answered):
            reply = await call.read()
            assert reply.response.step == (replies + 1) * T
            replies += 1
        replied.set()
        await asyncio.to_thread(gate.wait_entered, 1)
        left = len(xs) - answered - 1
        await asyncio.to_thread(wait_until, lambda: _queued(server) == left, 60, "all queued")
        call.cancel()
        # The server has ended the call, and with it cancelled the queued steps.
        await asyncio.to_thread(
            wait_until,
            lambda: recorder.finished["StreamSteps", "CANCELLED"] == 1,
            60,
            "the server to see the cancellation",
        )
    return replies


def test_cancelled_stream_applies_the_step_in_the_engine_whole_and_drops_the_queued():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((T, 8)).astype(np.float32) for _ in range(60)]
    recorder = Recorder()
    gate = EngineGate()
    with running_server([MODEL], observer=recorder) as server:
        try:
            replies = asyncio.run(
                _cancel_with_one_step_in_the_engine(server, gate, recorder, xs, answered=20)
            )
        finally:
            gate.open()
        wait_until(lambda: _idle(server), 60, "the held step to finish")
        with stub(server.address) as api:
            export = api.ExportState(pb.ExportStateRequest(session_id="victim"))
    assert replies == 20
    # The 20 answered, plus the one that was in the engine: applied whole, never half.
    assert export.session.step == 21 * T
    assert recorder.rejected == {"cancelled": len(xs) - 21}
    _, want = reference_run(MODEL, np.concatenate(xs[:21]))
    np.testing.assert_allclose(from_tensor(export.state), want, atol=1e-5, rtol=0)


def test_client_deadline_passed_in_queue_is_dropped_unapplied():
    """What a client sees: its own DEADLINE_EXCEEDED, and nothing applied.

    The client's timer ends the call when the deadline passes, and gRPC
    cancels the handler on the server at the same moment, so the server's
    DEADLINE status never reaches the client. When the step's turn comes
    (after the engine is free, long after the call ended) the scheduler
    checks the deadline before the cancellation, so the drop is counted as a
    *deadline*, its cause. The server's own DEADLINE status is checked below.
    """
    recorder = Recorder()
    x = to_tensor(np.ones((1, 8), np.float32))
    with running_server([MODEL], observer=recorder) as server, stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="c", session_id="busy"))
        api.OpenSession(pb.OpenSessionRequest(model="c", session_id="late"))
        with gated(server) as gate:
            blocker = api.Step.future(pb.StepRequest(session_id="busy", inputs=x), timeout=120)
            gate.wait_entered(1)
            with pytest.raises(grpc.RpcError) as info:
                api.Step(pb.StepRequest(session_id="late", inputs=x), timeout=0.2)
            wait_until(lambda: recorder.finished["Step", "CANCELLED"] == 1, 60, "the call to end")
            gate.open()
            assert blocker.result(timeout=120).step == 1
        wait_until(lambda: _idle(server), 60, "the queue to empty")
        late = api.GetSession(pb.GetSessionRequest(session_id="late"))
        state = api.ExportState(pb.ExportStateRequest(session_id="late")).state
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert recorder.rejected == {"deadline": 1}
    assert late.step == 0
    assert not from_tensor(state).any()


class _UnenforcedDeadline:
    """A servicer context with a deadline that gRPC does not enforce.

    Over gRPC the call would be cancelled at its deadline (see above); this
    keeps it alive, which is what a step sees when its deadline passes in
    the queue just before the call's cancellation reaches the server.
    """

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        self.status: grpc.Status | None = None

    def time_remaining(self) -> float:
        return self.remaining

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()


def test_server_refuses_a_step_whose_deadline_passed_in_the_queue_with_deadline():
    recorder = Recorder()
    x = np.ones((1, 8), np.float32)
    budget = 0.05
    with running_server([MODEL], observer=recorder) as server, stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="c", session_id="busy"))
        api.OpenSession(pb.OpenSessionRequest(model="c", session_id="late"))
        context = _UnenforcedDeadline(budget)

        async def late_step() -> None:
            srv = server.server
            assert srv.engine is not None
            servicer = SeqinferServicer(srv.engine, srv.settings)
            # Wrapped as every registered handler is: the guard gives the status.
            step = CallGuard(srv.observer, srv.settings.max_concurrent_rpcs).unary(
                "Step", servicer.Step
            )
            request = pb.StepRequest(session_id="late", inputs=to_tensor(x))
            with pytest.raises(grpc.aio.AbortError):
                await step(request, context)

        with gated(server) as gate:
            blocker = api.Step.future(
                pb.StepRequest(session_id="busy", inputs=to_tensor(x)), timeout=120
            )
            gate.wait_entered(1)
            late = asyncio.run_coroutine_threadsafe(late_step(), server.loop)
            wait_until(lambda: _queued(server) == 1, 60, "the late step to queue")
            queued_at = time.monotonic()  # after its deadline was set
            # A fact about the clock, not a guess about the server's progress.
            wait_until(lambda: time.monotonic() > queued_at + budget, 60, "its deadline")
            gate.open()
            assert blocker.result(timeout=120).step == 1
            late.result(timeout=60)
        info = api.GetSession(pb.GetSessionRequest(session_id="late"))
        state = api.ExportState(pb.ExportStateRequest(session_id="late")).state
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    details = dict(context.status.trailing_metadata)["grpc-status-details-bin"]
    code, reason, _ = status_reason(status_pb2.Status.FromString(details))
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "DEADLINE")
    assert recorder.rejected == {"deadline": 1}
    assert info.step == 0
    assert not from_tensor(state).any()
