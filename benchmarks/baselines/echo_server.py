"""The transport limit: the seqinfer contract served by grpc.aio with no compute.

Every step gets a reply whose output tensor has the size the real model's
would (``--output-size`` floats), so the bytes on the wire match. Requests are
parsed and replies built with the generated protobuf classes, as any Python
gRPC server must; nothing else happens, so this is the most a Python
``grpc.aio`` server can do per core with these messages.

    python -m benchmarks.baselines.echo_server --port 0 --output-size 64
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from benchmarks.baselines.serving import serve
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


class EchoServicer(pb_grpc.SeqinferServicer):
    """Replies to every step with a zero output of the model's output size."""

    def __init__(self, output_size: int) -> None:
        # One shared output tensor: the reply's bytes are the same for every step.
        self._outputs = pb.Tensor(
            dtype=pb.DTYPE_FLOAT32, shape=[output_size], data=bytes(4 * output_size)
        )

    def _respond(self, request: pb.StepRequest) -> pb.StepResponse:
        return pb.StepResponse(
            session_id=request.session_id,
            request_id=request.request_id,
            outputs=self._outputs,
            step=1,
            created=request.start,
        )

    def _result(self, request: pb.StepRequest) -> pb.StepResult:
        return pb.StepResult(
            session_id=request.session_id,
            request_id=request.request_id,
            response=self._respond(request),
        )

    async def Step(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepResponse:
        return self._respond(request)

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
        return pb.CloseSessionResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--output-size", type=int, default=64)
    args = parser.parse_args()
    # The RPCs not overridden answer UNIMPLEMENTED (the generated base does that).
    servicer = EchoServicer(args.output_size)  # type: ignore[abstract]
    asyncio.run(
        serve(lambda s: pb_grpc.add_SeqinferServicer_to_server(servicer, s), args.host, args.port)
    )


if __name__ == "__main__":
    main()
