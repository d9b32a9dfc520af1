"""The gRPC servicer: protobuf in, domain calls, protobuf out.

Each handler converts the request (``*_from_pb``), calls the router /
runtime, and converts the result (``*_to_pb``). Errors are domain
exceptions; ``_handle`` turns them into a status with ErrorInfo for unary
calls, and ``results.ResultBuilder`` into a per-item ``StepResult.error`` for
streams and StepMany, both through ``status.py``. Requests that could not be
decoded arrive as ``wire.Undecodable`` and are refused like any bad request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from seqinfer.service import inputs, replies
from seqinfer.service.bounds import check_request_id, check_step, check_ttl
from seqinfer.service.config import Settings
from seqinfer.service.errors import (
    CapacityFull,
    Draining,
    InvalidInput,
    QueueFull,
    SeqinferError,
    SessionExists,
    TooLarge,
    internal,
)
from seqinfer.service.models.spec import InputKind, OutputKind
from seqinfer.service.observer import Observer
from seqinfer.service.results import ResultBuilder, fill_response
from seqinfer.service.router import Router, check_session_id
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.scheduler import StepItem, StepOutcome
from seqinfer.service.state import Session
from seqinfer.service.status import status_code, to_grpc_status
from seqinfer.service.tensors import PROTO_DTYPES, encode
from seqinfer.service.wire import Undecodable
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")

_REJECTIONS: dict[type[SeqinferError], str] = {CapacityFull: "capacity", Draining: "draining"}
_INPUT_KINDS = {InputKind.TOKENS: pb.INPUT_KIND_TOKENS, InputKind.DENSE: pb.INPUT_KIND_DENSE}
_OUTPUT_KINDS = {
    OutputKind.LOGITS: pb.OUTPUT_KIND_LOGITS,
    OutputKind.PROBABILITIES: pb.OUTPUT_KIND_PROBABILITIES,
    OutputKind.VALUES: pb.OUTPUT_KIND_VALUES,
    OutputKind.HIDDEN: pb.OUTPUT_KIND_HIDDEN,
}


class Lifecycle:
    """Shared flag the server flips when it starts draining."""

    def __init__(self) -> None:
        self.draining = False

    def check(self) -> None:
        if self.draining:
            raise Draining("server is shutting down; retry on another replica")


# ------------------------------------------------------------ conversions --


def model_to_pb(runtime: ModelRuntime) -> pb.ModelInfo:
    spec = runtime.spec
    return pb.ModelInfo(
        name=spec.name,
        version=spec.version,
        input_kind=_INPUT_KINDS[spec.input_kind],
        input_size=spec.input_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        output_kind=_OUTPUT_KINDS[spec.output_kind],
        output_size=spec.out_features,
        dtype=PROTO_DTYPES[spec.torch_dtype],  # type: ignore[arg-type]
        device=str(runtime.device),
        description=spec.description,
        max_timesteps=runtime.settings.max_timesteps,
        max_sessions=runtime.store.max_sessions,
        open_sessions=len(runtime.store),
        state_bytes_per_session=spec.num_layers
        * spec.hidden_size
        * runtime.store.slab.element_size(),
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def session_to_pb(runtime: ModelRuntime, session: Session) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=session.session_id,
        model=runtime.spec.name,
        model_version=runtime.spec.version,
        step=session.step,
        created_at=_timestamp(session.created_at),
        last_used_at=_timestamp(session.last_used_wall()),
        tier=pb.STATE_TIER_DEVICE,
        idle_ttl_seconds=session.idle_ttl,
    )


def _optional_ttl(message: Any, field: str = "idle_ttl_seconds") -> float | None:
    return check_ttl(getattr(message, field), field) if message.HasField(field) else None


# ------------------------------------------------------------------ errors --


def _handle(
    method: str,
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Unary handler wrapper: metrics hooks and the domain-error → status mapping."""

    def wrap(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(fn)
        async def handler(
            self: SeqinferServicer, request: Any, context: grpc.aio.ServicerContext
        ) -> R:
            observer = self.observer
            observer.rpc_started(method)
            started = time.perf_counter()
            code = "OK"
            self.active_rpcs += 1
            try:
                if self.active_rpcs > self.settings.max_concurrent_rpcs:
                    raise self.overloaded()
                if type(request) is Undecodable:
                    raise request.error()
                return await fn(self, request, context)
            except SeqinferError as error:
                code = status_code(error).name
                await context.abort_with_status(to_grpc_status(error))
                raise  # abort_with_status raises; this line is for type checkers
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("%s failed", method)
                code = "INTERNAL"
                await context.abort_with_status(to_grpc_status(internal(exc)))
                raise
            finally:
                self.active_rpcs -= 1
                observer.rpc_finished(method, code, time.perf_counter() - started)

        return handler

    return wrap


# ---------------------------------------------------------------- servicer --


class SeqinferServicer(pb_grpc.SeqinferServicer):
    def __init__(
        self, router: Router, settings: Settings, observer: Observer, lifecycle: Lifecycle
    ) -> None:
        self.router = router
        # Built inside the server's event loop; cached because looking it up
        # per request shows in profiles.
        self._loop = asyncio.get_running_loop()
        self.settings = settings
        self.observer = observer
        self.lifecycle = lifecycle
        self.results = ResultBuilder(
            settings.max_message_bytes, settings.max_session_id_bytes, settings.max_request_id_bytes
        )
        self._reply_shapes = {r.key: replies.reply_shape(r.spec) for r in router.runtimes}
        self._step_many_bound = replies.MessageBound.of(r.spec for r in router.runtimes)

        # Calls in a handler now (a stream counts once). Past the bound a call
        # is refused at once, which keeps overload answered with a retryable
        # QUEUE_FULL rather than by gRPC's own queue of calls (CANCELLED).
        self.active_rpcs = 0

    def overloaded(self) -> QueueFull:
        limit = self.settings.max_concurrent_rpcs
        return QueueFull(
            f"server is busy: {limit} calls in progress (max_concurrent_rpcs); nothing was "
            "applied, retry later",
            bound="max_concurrent_rpcs",
            limit=limit,
        )

    # ------------------------------------------------------------ models --

    @_handle("ListModels")
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_to_pb(r) for r in self.router.runtimes])

    @_handle("GetModel")
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.ModelInfo:
        return model_to_pb(self.router.model(request.name, request.version))

    # ---------------------------------------------------------- sessions --

    def _check_id(
        self, session_id: str, field: str = "session_id", *, required: bool = True
    ) -> int:
        return check_session_id(
            session_id, field, self.settings.max_session_id_bytes, required=required
        )

    def _check_reply(self, size: int, what: str) -> None:
        limit = self.settings.max_message_bytes
        if size > limit:
            raise TooLarge(
                "reply",
                f"{what} would be up to {size} bytes, over max_message_bytes = {limit}; "
                "nothing was applied",
                reply_bytes=size,
                max_message_bytes=limit,
            )

    @_handle("OpenSession")
    async def OpenSession(self, request: pb.OpenSessionRequest, context: Any) -> pb.SessionInfo:
        self.lifecycle.check()
        self._check_id(request.session_id, required=False)
        runtime = self.router.model(request.model, request.model_version)
        ttl = _optional_ttl(request)
        state = (
            inputs.state_tensor(runtime.spec, request.initial_state, "initial_state")
            if request.HasField("initial_state")
            else None
        )
        if request.session_id:
            self.router.ensure_unused(request.session_id)
        session = await runtime.create_session(request.session_id or None, ttl, state)
        return session_to_pb(runtime, session)

    @_handle("GetSession")
    async def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.SessionInfo:
        self._check_id(request.session_id)
        return session_to_pb(*self.router.find(request.session_id))

    @_handle("CloseSession")
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        self._check_id(request.session_id)
        runtime, session = self.router.find(request.session_id)
        # Queued behind the session's accepted work: see ModelRuntime.close_session.
        return pb.CloseSessionResponse(final_step=await runtime.close_session(session))

    @_handle("ForkSession")
    async def ForkSession(self, request: pb.ForkSessionRequest, context: Any) -> pb.SessionInfo:
        self.lifecycle.check()
        self._check_id(request.session_id)
        self._check_id(request.new_session_id, "new_session_id", required=False)
        runtime, source = self.router.find(request.session_id)
        if request.new_session_id:
            self.router.ensure_unused(request.new_session_id)
        copy = await runtime.fork(source, request.new_session_id or None, _optional_ttl(request))
        return session_to_pb(runtime, copy)

    @_handle("ExportState")
    async def ExportState(
        self, request: pb.ExportStateRequest, context: Any
    ) -> pb.ExportStateResponse:
        id_bytes = self._check_id(request.session_id)
        runtime, session = self.router.find(request.session_id)
        self._check_reply(replies.export_bytes(runtime.spec, id_bytes), "the exported state")
        state = await runtime.export_state(session)
        return pb.ExportStateResponse(session=session_to_pb(runtime, session), state=encode(state))

    @_handle("ImportState")
    async def ImportState(self, request: pb.ImportStateRequest, context: Any) -> pb.SessionInfo:
        self.lifecycle.check()
        self._check_id(request.session_id)
        if not request.HasField("state"):
            raise InvalidInput("state", "is required")
        step = check_step(request.step, "step") if request.HasField("step") else None
        try:
            runtime, session = self.router.find(request.session_id)
        except SeqinferError:
            if not request.create:
                raise
            runtime = self.router.model(request.model, request.model_version)
            state = inputs.state_tensor(runtime.spec, request.state, "state")
            session = await runtime.create_session(request.session_id, None, state)
            if step is not None:
                session.step = step
            return session_to_pb(runtime, session)
        if request.create and request.model:
            # The id is another model's session: importing would overwrite it
            # with a state meant for the named model.
            named = self.router.model(request.model, request.model_version)
            if named is not runtime:
                raise SessionExists(
                    f"session {request.session_id!r} already exists (model {runtime.key})",
                    session_id=request.session_id,
                )
        state = inputs.state_tensor(runtime.spec, request.state, "state")
        await runtime.import_state(session, state, step)
        return session_to_pb(runtime, session)

    # ---------------------------------------------------------- stepping --

    async def _submit(self, request: pb.StepRequest, deadline: float | None) -> StepItem:
        """Validate a step request and queue it; the item's future gives the outcome."""
        item = self._submit_now(request, deadline)
        while item is None:
            # Creating its session needs a bigger slab; grow (off-thread), retry.
            runtime = self.router.model(request.model, request.model_version)
            try:
                await runtime.ensure_free_slot()
            except Exception as exc:  # e.g. out of memory: ours, reported as this item's error
                log.exception("could not grow the slab of %s", runtime.key)
                raise internal(exc) from exc
            item = self._submit_now(request, deadline)
        return item

    def _submit_now(self, request: pb.StepRequest, deadline: float | None) -> StepItem | None:
        """``_submit`` without awaiting: None when a new session must wait for slab growth.

        The hot path: a coroutine per request would cost more than the checks.
        Raises only SeqinferError: a fault of ours becomes INTERNAL for this
        request alone, so a stream or StepMany still answers it.
        """
        if type(request) is Undecodable:
            raise request.error()
        try:
            id_bytes = self._check_id(request.session_id, required=not request.start)
            id_bytes += check_request_id(request.request_id, self.settings.max_request_id_bytes)
            runtime: ModelRuntime
            session: Session | None = None
            if request.session_id:
                for candidate in self.router.runtimes:
                    session = candidate.store.sessions.get(request.session_id)
                    if session is not None:
                        runtime = candidate
                        break
            if session is None:
                if not request.start:
                    raise self.router.missing(request.session_id)
                runtime = self.router.model(request.model, request.model_version)
            try:
                self.lifecycle.check()
                return self._enqueue(runtime, session, request, deadline, id_bytes)
            except SeqinferError as error:
                # QUEUE_FULL is counted by the scheduler, which knows it as backpressure.
                reason = (
                    "invalid" if isinstance(error, InvalidInput) else _REJECTIONS.get(type(error))
                )
                if reason is not None:
                    self.observer.request_rejected(runtime.key, reason)
                raise
        except SeqinferError:
            raise
        except Exception as exc:
            log.exception("could not accept a step request")
            raise internal(exc) from exc

    def _enqueue(
        self,
        runtime: ModelRuntime,
        session: Session | None,
        request: pb.StepRequest,
        deadline: float | None,
        id_bytes: int,
    ) -> StepItem | None:
        values = inputs.step_inputs(
            runtime.spec,
            request.inputs,
            max_timesteps=self.settings.max_timesteps,
            allow_non_finite=self.settings.allow_non_finite_inputs,
        )
        output_mode = inputs.OUTPUT_MODES.get(request.output_mode)
        if output_mode is None:
            raise InvalidInput("output_mode", f"unknown value {request.output_mode}")
        expected_step = None
        if request.HasField("expected_step"):
            expected_step = check_step(request.expected_step, "expected_step")
        reply = replies.result_bytes(
            self._reply_shapes[runtime.key],
            len(values),
            output_mode,
            request.return_state,
            id_bytes,
        )
        if reply > self.settings.max_message_bytes:
            self._check_reply(reply, f"the reply ({output_mode.name} outputs of T = {len(values)})")
        created = False
        if session is None:
            ttl = _optional_ttl(request)
            session = runtime.create_session_now(request.session_id or None, ttl)
            if session is None:
                return None
            created = True
        item = StepItem(
            session,
            values,
            self._loop.create_future(),
            request.request_id,
            expected_step,
            request.reset,
            request.end,
            output_mode,
            request.return_state,
            deadline,
            created,
            reply_bytes=reply,
        )
        try:
            runtime.submit(item)
        except SeqinferError:
            if created:  # don't leave behind a session its creator never stepped
                runtime.end_session(session, "closed")
            raise
        return item

    def _deadline(self, context: Any) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    @_handle("Step")
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        item = await self._submit(request, self._deadline(context))
        outcome = await item.future
        response = fill_response(pb.StepResponse(), outcome)
        if outcome.replayed:  # the original may have asked for more outputs than this retry
            self._check_reply(response.ByteSize(), "the cached reply of this retried request")
        return response

    @_handle("StepMany")
    async def StepMany(self, request: pb.StepManyRequest, context: Any) -> pb.StepManyResponse:
        steps = request.steps
        if len(steps) > self.settings.max_step_many:
            raise TooLarge(
                "steps",
                f"{len(steps)} steps in one message; the limit is {self.settings.max_step_many}",
            )
        if not steps:
            return pb.StepManyResponse()
        # The reply holds every result: refuse, before anything is applied, a
        # message whose results could not all be sent.
        if self._step_many_bound.reply_bytes(len(steps), request.ByteSize()) > (
            self.settings.max_message_bytes
        ):
            estimates = replies.step_many_estimates(
                steps, self.router, self._reply_shapes, self.settings
            )
            self._check_reply(sum(estimates), f"the results of these {len(steps)} steps")
        deadline = self._deadline(context)
        loop = self._loop
        futures: list[asyncio.Future[StepOutcome]] = []
        for step in steps:
            try:
                item = self._submit_now(step, deadline) or await self._submit(step, deadline)
                futures.append(item.future)
            except SeqinferError as error:
                failed: asyncio.Future[StepOutcome] = loop.create_future()
                failed.set_exception(error)
                futures.append(failed)
        try:
            await asyncio.wait(futures)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()  # queued ones are skipped, never applied
            raise
        return self.results.step_many(steps, futures)

    async def StreamSteps(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResult]:
        stream = _StepStream(self, context)
        self.observer.rpc_started("StreamSteps")
        started = time.perf_counter()
        code = "OK"
        self.active_rpcs += 1
        try:
            if self.active_rpcs > self.settings.max_concurrent_rpcs:
                code = "RESOURCE_EXHAUSTED"
                await context.abort_with_status(to_grpc_status(self.overloaded()))
            async for result in stream.run(request_iterator):
                yield result
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = "INTERNAL"
            log.exception("StreamSteps failed")
            raise
        finally:
            self.active_rpcs -= 1
            self.observer.rpc_finished("StreamSteps", code, time.perf_counter() - started)


class _StepStream:
    """One StreamSteps call: a reader task queues items, results go out as they finish.

    Results of one session leave in request order: a request answered at once
    (e.g. invalid) waits behind that session's earlier requests on this stream.

    Flow control, not buffering: the reader stops reading while the stream's
    unsent replies (requests read and not yet written back, counted with their
    request and reply bytes) are at ``max_stream_unsent[_bytes]``. A client
    that sends without reading then meets HTTP/2 flow control on its own
    writes instead of growing the server.
    """

    def __init__(self, servicer: SeqinferServicer, context: Any) -> None:
        self.servicer = servicer
        self.context = context
        self.results: asyncio.Queue[tuple[pb.StepResult, int] | None] = asyncio.Queue()
        self.latest: dict[str, asyncio.Future[StepOutcome]] = {}
        self.outstanding: set[asyncio.Future[StepOutcome]] = set()
        self.reading = True
        self.max_unsent = servicer.settings.max_stream_unsent
        self.max_unsent_bytes = servicer.settings.max_stream_unsent_bytes
        self.unsent = 0
        self.unsent_bytes = 0
        self.room = asyncio.Event()
        self.room.set()

    async def run(self, requests: AsyncIterator[pb.StepRequest]) -> AsyncIterator[pb.StepResult]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                entry = await self.results.get()
                if entry is None:
                    break
                yield entry[0]
                # Written (gRPC's write returned): the reply has left this stream's books.
                self._sent(entry[1])
            await reader  # surfaces a reader failure
        finally:
            reader.cancel()
            for future in self.outstanding:
                future.cancel()  # queued items are dropped unapplied

    def _sent(self, cost: int) -> None:
        self.unsent -= 1
        self.unsent_bytes -= cost
        if self.unsent < self.max_unsent and self.unsent_bytes < self.max_unsent_bytes:
            self.room.set()

    async def _read(self, requests: AsyncIterator[pb.StepRequest]) -> None:
        loop = asyncio.get_running_loop()
        servicer = self.servicer
        deadline = servicer._deadline(self.context)
        try:
            async for request in requests:
                try:
                    item = servicer._submit_now(request, deadline)
                    if item is None:
                        item = await servicer._submit(request, deadline)
                    future = item.future
                    cost = item.nbytes + item.reply_bytes
                except SeqinferError as error:
                    future = loop.create_future()
                    future.set_exception(error)
                    # The request stays referenced until its error result goes out.
                    cost = request.ByteSize()
                self._track(request, future, cost)
                if self.unsent >= self.max_unsent or self.unsent_bytes >= self.max_unsent_bytes:
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.reading = False
            if not self.outstanding:
                self.results.put_nowait(None)

    def _track(
        self, request: pb.StepRequest, future: asyncio.Future[StepOutcome], cost: int
    ) -> None:
        self.outstanding.add(future)
        self.unsent += 1
        self.unsent_bytes += cost
        key = request.session_id
        earlier = self.latest.get(key)
        self.latest[key] = future

        def emit(_: object) -> None:
            self.outstanding.discard(future)
            if self.latest.get(key) is future:
                del self.latest[key]
            if future.cancelled():
                self._sent(cost)
                return
            self.results.put_nowait((self.servicer.results.step_result(request, future), cost))
            if not self.reading and not self.outstanding:
                self.results.put_nowait(None)

        if earlier is not None and not earlier.done() and future.done():
            # Answered at once, but must not overtake the session's earlier item.
            earlier.add_done_callback(emit)
        else:
            future.add_done_callback(emit)
