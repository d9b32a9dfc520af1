"""Outputs and final states over real gRPC equal torch.nn.GRU run over each whole sequence."""

from __future__ import annotations

import asyncio
import random

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import from_tensor, make_model, reference_run, running_server, to_tensor

SESSIONS = 64
MODELS = {
    "dense-1": make_model("dense", layers=1, name="dense-1", seed=1),
    "dense-3": make_model("dense", layers=3, name="dense-3", seed=2),
    "tokens-1": make_model("tokens", layers=1, name="tokens-1", input_size=30, seed=3),
    "tokens-2": make_model("tokens", layers=2, name="tokens-2", input_size=30, seed=4),
}


def _chunk(model, rng: np.random.Generator, length: int) -> np.ndarray:
    spec = model.spec
    if spec.input_kind == "tokens":
        return rng.integers(0, spec.input_size, size=length).astype(np.int32)
    return rng.standard_normal((length, spec.input_size)).astype(np.float32)


async def _drive(address: str, model_name: str, seed: int) -> None:
    model = MODELS[model_name]
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    sent: dict[str, list[np.ndarray]] = {f"{model_name}-{i}": [] for i in range(SESSIONS)}
    got: dict[str, list[np.ndarray]] = {sid: [] for sid in sent}
    final_state: dict[str, np.ndarray] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SeqinferStub(channel)

        def request(sid: str) -> pb.StepRequest:
            x = _chunk(model, rng, pick.choice([1, 1, 1, 2, 3, 7, 17, 40]))
            sent[sid].append(x)
            return pb.StepRequest(
                session_id=sid,
                inputs=to_tensor(x),
                start=len(sent[sid]) == 1,
                model=model_name,
                output_mode=pb.OUTPUT_MODE_ALL,
                return_state=True,
            )

        def record(result_sid: str, response: pb.StepResponse) -> None:
            got[result_sid].append(from_tensor(response.outputs))
            final_state[result_sid] = from_tensor(response.state)

        # Round 1: a stream carrying every session's steps interleaved.
        order = [sid for sid in sent for _ in range(3)]
        pick.shuffle(order)
        requests = [request(sid) for sid in order]
        call = stub.StreamSteps(iter(requests))
        async for result in call:
            assert result.WhichOneof("outcome") == "response", result.error
            record(result.session_id, result.response)
        # Round 2: unary Step calls, many concurrently (different sessions).
        responses = await asyncio.gather(*(stub.Step(request(sid)) for sid in sent))
        for response in responses:
            record(response.session_id, response)
        # Round 3: StepMany with every session.
        many = await stub.StepMany(pb.StepManyRequest(steps=[request(sid) for sid in sent]))
        for result in many.results:
            record(result.session_id, result.response)
    for sid in sent:
        want_out, want_state = reference_run(model, np.concatenate(sent[sid]))
        np.testing.assert_allclose(np.concatenate(got[sid]), want_out, atol=1e-5, rtol=0)
        np.testing.assert_allclose(final_state[sid], want_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_interleaved_sessions_match_full_sequence_gru(model_name: str):
    with running_server(list(MODELS.values()), long_chunk_threshold=16) as server:
        asyncio.run(_drive(server.address, model_name, seed=len(model_name)))
