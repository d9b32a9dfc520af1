"""The gRPC servicer: protobuf in, a command to the engine, its reply out as protobuf.

Each handler gets the request, its context, and the caller's tenant (from
its token, resolved by ``guard``; "" on a server without tokens). It
converts the request (``convert.*_from_pb``), awaits the
``EngineClient``, and converts the reply (``convert.*_to_pb``,
``results.ResultBuilder``). It knows no session, slab or model: every rule
is the engine side's. Errors are domain exceptions that ``guard`` (around
every RPC, registered by ``wire.add_servicer``) turns into a status with
ErrorInfo, and ``results`` into a per-step ``StepResult.error`` for streams
and StepMany.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from seqinfer.service import convert
from seqinfer.service.config import Settings
from seqinfer.service.engine_client import EngineClient
from seqinfer.service.errors import TooLarge
from seqinfer.service.results import ResultBuilder, fill_response
from seqinfer.service.stream import StepStream
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


def deadline_of(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class SeqinferServicer(pb_grpc.SeqinferServicer):
    def __init__(self, engine: EngineClient, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.results = ResultBuilder(
            settings.max_message_bytes, settings.max_session_id_bytes, settings.max_request_id_bytes
        )

    # ------------------------------------------------------------ models --

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any, tenant: str = ""
    ) -> pb.ListModelsResponse:
        models = await self.engine.models(tenant)
        return pb.ListModelsResponse(models=[convert.model_to_pb(m) for m in models])

    async def GetModel(
        self, request: pb.GetModelRequest, context: Any, tenant: str = ""
    ) -> pb.ModelInfo:
        return convert.model_to_pb(await self.engine.model(request.name, request.version, tenant))

    # ---------------------------------------------------------- sessions --

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: Any, tenant: str = ""
    ) -> pb.SessionInfo:
        command = convert.open_from_pb(request, tenant)
        return convert.session_to_pb(await self.engine.open(command))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any, tenant: str = ""
    ) -> pb.SessionInfo:
        return convert.session_to_pb(await self.engine.get(request.session_id, tenant))

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any, tenant: str = ""
    ) -> pb.CloseSessionResponse:
        final_step = await self.engine.close(request.session_id, tenant)
        return pb.CloseSessionResponse(final_step=final_step)

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Any, tenant: str = ""
    ) -> pb.SessionInfo:
        command = convert.fork_from_pb(request, tenant)
        return convert.session_to_pb(await self.engine.fork(command))

    async def ExportState(
        self, request: pb.ExportStateRequest, context: Any, tenant: str = ""
    ) -> pb.ExportStateResponse:
        return convert.export_to_pb(await self.engine.export(request.session_id, tenant))

    async def ImportState(
        self, request: pb.ImportStateRequest, context: Any, tenant: str = ""
    ) -> pb.SessionInfo:
        command = convert.import_from_pb(request, tenant)
        return convert.session_to_pb(await self.engine.import_state(command))

    # ---------------------------------------------------------- stepping --

    async def Step(
        self, request: pb.StepRequest, context: Any, tenant: str = ""
    ) -> pb.StepResponse:
        command = convert.step_from_pb(request, deadline_of(context), tenant)
        admitted = self.engine.try_step(command) or await self.engine.step(command)
        outcome = await admitted.future
        response = fill_response(pb.StepResponse(), outcome)
        if outcome.replayed:  # the original may have asked for more outputs than this retry
            self.results.check_replay(response.ByteSize())
        return response

    async def StepMany(
        self, request: pb.StepManyRequest, context: Any, tenant: str = ""
    ) -> pb.StepManyResponse:
        steps = request.steps
        limit = self.settings.max_step_many
        if len(steps) > limit:  # before reading them: refusing must cost little
            raise TooLarge("steps", f"{len(steps)} steps in one message; the limit is {limit}")
        batch = convert.batch_from_pb(request, deadline_of(context), tenant)
        reply = await self.engine.step_batch(batch)
        return self.results.step_many(batch, reply.replies)

    def StreamSteps(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any, tenant: str = ""
    ) -> AsyncIterator[pb.StepResult]:
        # The stream's own iterator, not a generator around it: every result
        # would pay one more generator hop (the guard adds the only other).
        stream = StepStream(self.engine, self.results, self.settings, deadline_of(context), tenant)
        return stream.run(request_iterator)
