"""The hand-written baseline: what people write before they reach for a framework.

``grpc.aio`` + ``torch.nn.GRU``; each session's hidden state in a dict; every
call computes its own session's step right away, with no batching across
sessions. It speaks the seqinfer contract (Step, StreamSteps, StepMany,
CloseSession) so the same load generator drives it; StepMany simply steps its
items one after another.

It is meant to be honest and reasonably written, not a straw man: inputs are
decoded with numpy (no per-float Python objects), compute runs under
``torch.inference_mode`` on the event loop (a hop to a thread pool per step
costs more than a batch-1 GRU step here), and torch uses one intra-op thread
by default because batch-1 steps do not gain from more on two cores (set
``--threads`` to try).

    python -m benchmarks.baselines.handwritten_server --port 0
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from google.rpc import status_pb2

from benchmarks.baselines.serving import serve
from benchmarks.reference import MODELS, GruWithHead, from_loaded
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


class StepError(Exception):
    """A request the server refuses, with the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Session:
    model: str
    state: torch.Tensor  # [layers, 1, hidden]
    step: int = 0


class HandwrittenServicer(pb_grpc.SeqinferServicer):
    """One session per call, states in a dict, no batching."""

    def __init__(self, models: dict[str, GruWithHead]) -> None:
        self.models = models
        self.sessions: dict[str, Session] = {}

    def _zero_state(self, name: str) -> torch.Tensor:
        gru = self.models[name].gru
        return torch.zeros(gru.num_layers, 1, gru.hidden_size)

    def step(self, request: pb.StepRequest) -> pb.StepResponse:
        """Apply one request to its session; raise StepError on a bad one."""
        created = False
        session = self.sessions.get(request.session_id)
        if session is None:
            if not request.start:
                raise StepError(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
            if request.model not in self.models:
                raise StepError(grpc.StatusCode.NOT_FOUND, f"no model {request.model!r}")
            session = Session(request.model, self._zero_state(request.model))
            self.sessions[request.session_id] = session
            created = True
        elif request.reset:
            session.state = self._zero_state(session.model)
            session.step = 0
        module = self.models[session.model]
        x = self._decode(request.inputs, module.gru.input_size)
        with torch.inference_mode():
            outputs, session.state = module(x.unsqueeze(1), session.state)
        session.step += x.shape[0]
        response = pb.StepResponse(
            session_id=request.session_id,
            request_id=request.request_id,
            step=session.step,
            created=created,
        )
        if request.output_mode != pb.OUTPUT_MODE_NONE:
            out = (
                outputs[:, 0, :] if request.output_mode == pb.OUTPUT_MODE_ALL else outputs[-1, 0, :]
            )
            response.outputs.dtype = pb.DTYPE_FLOAT32
            response.outputs.shape.extend(out.shape)
            response.outputs.data = out.numpy().tobytes()
        if request.return_state:
            state = session.state[:, 0, :]
            response.state.dtype = pb.DTYPE_FLOAT32
            response.state.shape.extend(state.shape)
            response.state.data = state.numpy().tobytes()
        if request.end:
            del self.sessions[request.session_id]
            response.closed = True
        return response

    @staticmethod
    def _decode(tensor: pb.Tensor, input_size: int) -> torch.Tensor:
        if tensor.dtype != pb.DTYPE_FLOAT32:
            raise StepError(grpc.StatusCode.INVALID_ARGUMENT, "inputs must be float32")
        shape = tuple(tensor.shape)
        if len(shape) != 2 or shape[1] != input_size or shape[0] < 1:
            raise StepError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs must be [T, {input_size}]")
        if len(tensor.data) != 4 * shape[0] * shape[1]:
            raise StepError(
                grpc.StatusCode.INVALID_ARGUMENT, "inputs data size does not match shape"
            )
        return torch.from_numpy(np.frombuffer(tensor.data, dtype="<f4").reshape(shape).copy())

    def _result(self, request: pb.StepRequest) -> pb.StepResult:
        result = pb.StepResult(session_id=request.session_id, request_id=request.request_id)
        try:
            result.response.CopyFrom(self.step(request))
        except StepError as exc:
            result.error.CopyFrom(status_pb2.Status(code=exc.code.value[0], message=exc.message))
        return result

    async def Step(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepResponse:
        try:
            return self.step(request)
        except StepError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def StreamSteps(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StepResult]:
        async for request in request_iterator:
            yield self._result(request)

    async def StepMany(
        self, request: pb.StepManyRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepManyResponse:
        return pb.StepManyResponse(results=[self._result(r) for r in request.steps])

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        session = self.sessions.pop(request.session_id, None)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
            raise AssertionError("unreachable")
        return pb.CloseSessionResponse(final_step=session.step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="bench-gru,bench-gru-large")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {name: from_loaded(MODELS[name]()) for name in args.models.split(",")}
    # The RPCs not overridden answer UNIMPLEMENTED (the generated base does that).
    servicer = HandwrittenServicer(models)  # type: ignore[abstract]
    asyncio.run(
        serve(lambda s: pb_grpc.add_SeqinferServicer_to_server(servicer, s), args.host, args.port)
    )


if __name__ == "__main__":
    main()
