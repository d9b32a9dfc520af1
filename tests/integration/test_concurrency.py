"""Many client tasks on many streams, on the same and on different sessions.

The server's counter and final state must prove that every accepted step was
applied exactly once and in one consistent order: we rebuild the applied
order from the counters in the replies and replay it through torch.nn.GRU.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import numpy as np

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import from_tensor, make_model, reference_run, running_server, to_tensor

MODEL = make_model("dense", layers=2, name="conc", seed=9)
SHARED = [f"shared-{i}" for i in range(4)]
STREAMS = 12
STEPS_PER_STREAM = 40


async def _stream_worker(stub, worker: int, log: list[tuple[str, np.ndarray, int]]) -> None:
    rng = np.random.default_rng(worker)
    own = f"own-{worker}"
    plan = []
    for k in range(STEPS_PER_STREAM):
        sid = own if k % 2 == 0 else SHARED[(worker + k) % len(SHARED)]
        plan.append((sid, rng.standard_normal((int(rng.integers(1, 4)), 8)).astype(np.float32)))
    requests = [
        pb.StepRequest(
            session_id=sid,
            inputs=to_tensor(x),
            request_id=uuid.uuid4().hex,
            start=sid == own and k == 0,
            model="conc",
            output_mode=pb.OUTPUT_MODE_NONE,
        )
        for k, (sid, x) in enumerate(plan)
    ]
    by_request = {r.request_id: x for r, (_, x) in zip(requests, plan)}
    async for result in stub.StreamSteps(iter(requests)):
        assert result.WhichOneof("outcome") == "response", result.error.message
        log.append((result.session_id, by_request[result.request_id], result.response.step))


async def _unary_worker(stub, worker: int, log: list[tuple[str, np.ndarray, int]]) -> None:
    rng = np.random.default_rng(1000 + worker)
    for k in range(15):
        sid = SHARED[k % len(SHARED)]
        x = rng.standard_normal((1, 8)).astype(np.float32)
        response = await stub.Step(
            pb.StepRequest(session_id=sid, inputs=to_tensor(x), output_mode=pb.OUTPUT_MODE_NONE)
        )
        log.append((sid, x, response.step))


async def _run(address: str) -> None:
    log: list[tuple[str, np.ndarray, int]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        for sid in SHARED:
            await stub.OpenSession(pb.OpenSessionRequest(model="conc", session_id=sid))
        await asyncio.gather(
            *(_stream_worker(stub, w, log) for w in range(STREAMS)),
            *(_unary_worker(stub, w, log) for w in range(6)),
        )
        exports = {
            sid: await stub.ExportState(pb.ExportStateRequest(session_id=sid))
            for sid in {entry[0] for entry in log}
        }
    for sid, export in exports.items():
        applied = sorted((step, x) for s, x, step in log if s == sid)
        # Counters after each request are strictly increasing by T: no step
        # applied twice, none lost, none interleaved inside another.
        counter = 0
        for step, x in applied:
            counter += x.shape[0]
            assert step == counter, f"{sid}: reply says {step}, expected {counter}"
        assert export.session.step == counter
        _, want_state = reference_run(MODEL, np.concatenate([x for _, x in applied]))
        np.testing.assert_allclose(from_tensor(export.state), want_state, atol=1e-5, rtol=0)


def test_every_accepted_step_applies_exactly_once_in_order():
    with running_server([MODEL], max_batch_size=16) as server:
        asyncio.run(_run(server.address))
