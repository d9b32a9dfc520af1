"""Check a server's outputs against ``torch.nn.GRU`` over whole sequences.

A few sessions are driven with seeded inputs, one timestep per request (and,
where the server supports it, one request of many timesteps); every output is
compared with the reference module run over the whole sequence from a zero
state. Done for every server that computes, in the same run as the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np
import torch

from benchmarks.reference import reference_outputs
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

# float32 kernels differ between gru_cell, nn.GRU and batch sizes by rounding only.
TOLERANCE = 1e-4


@dataclass
class Check:
    server: str
    transport: str
    sessions: int
    steps: int
    max_abs_err: float
    ok: bool
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(seed: int, steps: int, size: int) -> torch.Tensor:
    return torch.randn(steps, size, generator=torch.Generator().manual_seed(seed))


def _tensor(x: torch.Tensor) -> pb.Tensor:
    return pb.Tensor(
        dtype=pb.DTYPE_FLOAT32, shape=list(x.shape), data=x.numpy().astype("<f4").tobytes()
    )


def _decode(tensor: pb.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def _step(sid: str, x: torch.Tensor, first: bool, model: str, mode: int = 1) -> pb.StepRequest:
    request = pb.StepRequest(session_id=sid, inputs=_tensor(x), output_mode=mode)  # type: ignore[arg-type]
    if first:
        request.start = True
        request.model = model
    return request


def _compare(
    server: str, transport: str, got: dict[str, list[np.ndarray]], want: dict[str, torch.Tensor]
) -> Check:
    err = 0.0
    steps = 0
    for sid, expected in want.items():
        outputs = np.stack(got.get(sid, []) or [np.zeros(0)])
        if outputs.shape != tuple(expected.shape):
            problem = f"{sid}: got shape {outputs.shape}, want {tuple(expected.shape)}"
            return Check(server, transport, len(want), steps, float("inf"), False, problem)
        err = max(err, float(np.abs(outputs - expected.numpy()).max()))
        steps += expected.shape[0]
    return Check(server, transport, len(want), steps, err, err <= TOLERANCE)


def _interleaved(
    sids: list[str], xs: dict[str, torch.Tensor], steps: int, model: str
) -> Iterator[pb.StepRequest]:
    for t in range(steps):
        for sid in sids:
            yield _step(sid, xs[sid][t : t + 1], t == 0, model)


def verify_seqinfer_contract(
    server: str, address: str, model: str = "bench-gru", sessions: int = 2, steps: int = 24
) -> list[Check]:
    """Stream, unary, StepMany and a long chunk against nn.GRU (any seqinfer-contract server)."""
    size = {"bench-gru": 64, "bench-gru-large": 256}[model]
    checks = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        for t_index, transport in enumerate(("stream", "unary", "many", "chunk")):
            sids = [f"verify-{server}-{transport}-{k}" for k in range(sessions)]
            xs = {sid: _inputs(1000 * t_index + k, steps, size) for k, sid in enumerate(sids)}
            want = {sid: reference_outputs(model, x) for sid, x in xs.items()}
            got: dict[str, list[np.ndarray]] = {sid: [] for sid in sids}
            try:
                if transport == "stream":
                    # Sessions interleaved on one stream: results of a session come in order.
                    requests = _interleaved(sids, xs, steps, model)
                    for result in stub.StreamSteps(requests, timeout=60):
                        if result.WhichOneof("outcome") != "response":
                            raise RuntimeError(f"error result: {result.error.message}")
                        got[result.session_id].append(_decode(result.response.outputs))
                elif transport == "unary":
                    for t in range(steps):
                        for sid in sids:
                            reply = stub.Step(
                                _step(sid, xs[sid][t : t + 1], t == 0, model), timeout=30
                            )
                            got[sid].append(_decode(reply.outputs))
                elif transport == "many":
                    for t in range(steps):
                        batch = [_step(sid, xs[sid][t : t + 1], t == 0, model) for sid in sids]
                        reply = stub.StepMany(pb.StepManyRequest(steps=batch), timeout=30)
                        for result in reply.results:
                            if result.WhichOneof("outcome") != "response":
                                raise RuntimeError(f"error result: {result.error.message}")
                            got[result.session_id].append(_decode(result.response.outputs))
                else:
                    # All timesteps in one request, outputs of every timestep.
                    for sid in sids:
                        reply = stub.Step(
                            _step(sid, xs[sid], True, model, mode=pb.OUTPUT_MODE_ALL), timeout=60
                        )
                        got[sid].extend(_decode(reply.outputs))
                checks.append(_compare(server, transport, got, want))
            except (grpc.RpcError, RuntimeError) as exc:
                text = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                checks.append(Check(server, transport, sessions, 0, float("inf"), False, str(text)))
            for sid in sids:
                try:
                    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), timeout=10)
                except grpc.RpcError:
                    pass  # already closed or never opened: nothing to clean up
    return checks


def verify_torchserve(address: str, sessions: int = 2, steps: int = 24) -> list[Check]:
    """StreamPredictions2, one stream per session, each step waiting for its reply.

    Ping-pong on purpose: TorchServe refuses a sequence's requests beyond
    ``maxSequenceJobQueueSize`` queued at once.
    """
    return asyncio.run(_verify_torchserve(address, sessions, steps))


async def _verify_torchserve(address: str, sessions: int, steps: int) -> list[Check]:
    from benchmarks.loadgen.spec import LoadSpec
    from benchmarks.peers.torchserve import client

    spec = LoadSpec(target=address, transport="torchserve")
    sids = [f"verify-torchserve-{k}" for k in range(sessions)]
    xs = {sid: _inputs(5000 + k, steps, 64) for k, sid in enumerate(sids)}
    want = {sid: reference_outputs("bench-gru", x) for sid, x in xs.items()}
    got: dict[str, list[np.ndarray]] = {sid: [] for sid in sids}
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            for sid in sids:
                call: Any = channel.stream_stream(client.STREAM_PATH)(timeout=60)
                for t in range(steps):
                    raw = xs[sid][t].numpy().astype("<f4").tobytes()
                    await call.write(client.request(spec, sid, raw, t == 0, t == steps - 1))
                    prediction, problem = client.parse_reply(bytes(await call.read()))
                    if problem:
                        raise RuntimeError(problem)
                    got[sid].append(np.frombuffer(prediction, dtype="<f4"))
                await call.done_writing()
    except (grpc.RpcError, RuntimeError) as exc:
        text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        return [Check("torchserve", "stream", sessions, 0, float("inf"), False, str(text))]
    return [_compare("torchserve", "stream", got, want)]
