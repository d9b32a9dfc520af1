"""Cancelled streams and passed deadlines leave no half-applied state."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import from_tensor, make_model, reference_run, running_server, to_tensor

MODEL = make_model("dense", hidden=64, name="c", seed=3)
SLOW = make_model("dense", hidden=512, layers=3, name="slow", seed=4)
T = 3


async def _cancel_midway(address: str, xs: list[np.ndarray]) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        await stub.OpenSession(pb.OpenSessionRequest(model="c", session_id="victim"))
        call = stub.StreamSteps(
            pb.StepRequest(
                session_id="victim", inputs=to_tensor(x), output_mode=pb.OUTPUT_MODE_NONE
            )
            for x in xs
        )
        replies = 0
        async for _ in call:
            replies += 1
            if replies == 20:
                call.cancel()
                break
        return replies


def test_cancelled_stream_applies_whole_requests_only():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((T, 8)).astype(np.float32) for _ in range(400)]
    with running_server([MODEL]) as server:
        replies = asyncio.run(_cancel_midway(server.address, xs))
        time.sleep(0.3)  # let anything in flight finish
        with grpc.insecure_channel(server.address) as channel:
            export = pb_grpc.SeqinferStub(channel).ExportState(
                pb.ExportStateRequest(session_id="victim")
            )
    applied = export.session.step
    assert applied % T == 0, "a request was applied in part"
    assert replies * T <= applied < len(xs) * T, "cancellation dropped nothing, or lost replies"
    _, want = reference_run(MODEL, np.concatenate(xs[: applied // T]))
    np.testing.assert_allclose(from_tensor(export.state), want, atol=1e-5, rtol=0)


def test_deadline_passed_in_queue_is_dropped_unapplied():
    big = to_tensor(np.ones((4000, 8), np.float32))
    with running_server([SLOW], long_chunk_threshold=100_000) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SeqinferStub(channel)
            stub.OpenSession(pb.OpenSessionRequest(model="slow", session_id="busy"))
            stub.OpenSession(pb.OpenSessionRequest(model="slow", session_id="late"))
            # Occupy the engine with a 4000-timestep step-by-step chunk...
            blocker = stub.Step.future(pb.StepRequest(session_id="busy", inputs=big))
            time.sleep(0.2)
            # ...so this one's 50 ms deadline passes while it waits in the queue.
            try:
                stub.Step(
                    pb.StepRequest(
                        session_id="late", inputs=to_tensor(np.ones((1, 8), np.float32))
                    ),
                    timeout=0.05,
                )
                raised = None
            except grpc.RpcError as error:
                raised = error.code()
            assert blocker.result(timeout=120).step == 4000
            time.sleep(0.3)  # had it not been dropped, it would have run by now
            info = stub.GetSession(pb.GetSessionRequest(session_id="late"))
            state = stub.ExportState(pb.ExportStateRequest(session_id="late")).state
    assert raised == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.step == 0
    assert not from_tensor(state).any()
