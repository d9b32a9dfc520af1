"""The asyncio client: :class:`AsyncClient` mirrors :class:`~seqinfer.client.Client`.

Same methods, arguments, results, errors and retry rules (see
:mod:`seqinfer.client.client` for which calls are retried and why), but
every call is a coroutine and the channel is a ``grpc.aio`` channel. Create
it inside a running event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import numpy.typing as npt

from seqinfer.client import messages, tensors
from seqinfer.client.client import StepManyResult, _step_many_results
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, SessionExists, from_rpc_error
from seqinfer.client.messages import Inputs, OutputMode, StepCall
from seqinfer.client.options import (
    DEFAULT_ADDRESS,
    ChannelOptions,
    Metadata,
    call_metadata,
    make_aio_channel,
)
from seqinfer.client.retry import RetryPolicy, acall_with_retry
from seqinfer.client.session import AsyncSession, needs_kind
from seqinfer.client.stream import DEFAULT_MAX_IN_FLIGHT, AsyncStepStream
from seqinfer.client.tensors import DTypeLike, InputKind, timesteps
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

AsyncStepItem = StepCall | tuple[AsyncSession, Inputs]


class AsyncClient:
    """An asyncio connection to a seqinfer server; see ``Client`` for the arguments."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: ChannelOptions | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self._options = options if options is not None else ChannelOptions()
        self._metadata: Metadata = tuple((str(k), str(v)) for k, v in metadata)
        self._owns_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else make_aio_channel(address, self._options, channel_credentials)
        )
        self._stub: Any = pb_grpc.SeqinferStub(self._channel)
        self._kinds: dict[tuple[str, str], InputKind | None] = {}

    # -- lifecycle --------------------------------------------------------

    async def close(self) -> None:
        """Closes the channel (if this client made it)."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- models -------------------------------------------------------------

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server serves."""
        resp = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in resp.models]

    async def get_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """One model; ``version`` "" means the newest."""
        req = pb.GetModelRequest(name=name, version=version)
        return ModelInfo.from_proto(await self._unary(self._stub.GetModel, req, timeout))

    # -- sessions -------------------------------------------------------------

    async def open_session(
        self,
        model: str,
        session_id: str | None = None,
        *,
        model_version: str = "",
        initial_state: npt.ArrayLike | None = None,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> AsyncSession:
        """Opens a session and returns its handle (see ``Client.open_session``)."""
        chosen = session_id or messages.new_request_id()
        req = messages.open_request(
            model,
            model_version=model_version,
            session_id=chosen,
            initial_state=initial_state,
            idle_ttl=idle_ttl,
        )

        async def adopt(attempt: int, error: SeqinferError) -> pb.SessionInfo | None:
            if attempt > 1 and session_id is None and isinstance(error, SessionExists):
                return await self._get_session_proto(chosen, timeout)
            return None

        info = await self._unary(self._stub.OpenSession, req, timeout, chosen, recover=adopt)
        return AsyncSession(self, SessionInfo.from_proto(info))

    @asynccontextmanager
    async def session(
        self,
        model: str,
        session_id: str | None = None,
        *,
        model_version: str = "",
        initial_state: npt.ArrayLike | None = None,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """``async with client.session("m") as s:`` opens a session, closing it on exit."""
        sess = await self.open_session(
            model,
            session_id,
            model_version=model_version,
            initial_state=initial_state,
            idle_ttl=idle_ttl,
            timeout=timeout,
        )
        async with sess:
            yield sess

    async def attach(self, session_id: str, *, timeout: float | None = None) -> AsyncSession:
        """A handle for an existing session (its counter read from the server)."""
        return AsyncSession(self, await self.get_session(session_id, timeout=timeout))

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """A session's info, including its step counter."""
        return SessionInfo.from_proto(await self._get_session_proto(session_id, timeout))

    async def _get_session_proto(self, session_id: str, timeout: float | None) -> pb.SessionInfo:
        req = pb.GetSessionRequest(session_id=session_id)
        result: pb.SessionInfo = await self._unary(self._stub.GetSession, req, timeout, session_id)
        return result

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Closes a session; returns the step counter it had."""
        req = pb.CloseSessionRequest(session_id=session_id)
        resp = await self._unary(self._stub.CloseSession, req, timeout, session_id)
        return int(resp.final_step)

    async def fork_session(
        self,
        session_id: str,
        new_id: str | None = None,
        *,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> AsyncSession:
        """Copies a session's state and counter into a new session; returns its handle."""
        chosen = new_id or messages.new_request_id()
        req = messages.fork_request(session_id, chosen, idle_ttl)

        async def adopt(attempt: int, error: SeqinferError) -> pb.SessionInfo | None:
            if attempt > 1 and new_id is None and isinstance(error, SessionExists):
                return await self._get_session_proto(chosen, timeout)
            return None

        info = await self._unary(self._stub.ForkSession, req, timeout, session_id, recover=adopt)
        return AsyncSession(self, SessionInfo.from_proto(info))

    async def export_state(self, session_id: str, *, timeout: float | None = None) -> ExportedState:
        """``(state, info)``: the hidden state and the session."""
        req = pb.ExportStateRequest(session_id=session_id)
        resp = await self._unary(self._stub.ExportState, req, timeout, session_id)
        return ExportedState(tensors.from_proto(resp.state), SessionInfo.from_proto(resp.session))

    async def import_state(
        self,
        session_id: str,
        state: npt.ArrayLike,
        *,
        create: bool = False,
        model: str = "",
        model_version: str = "",
        step: int | None = None,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> SessionInfo:
        """Overwrites a session's hidden state (see ``Client.import_state``)."""
        req = messages.import_request(
            session_id,
            state,
            create=create,
            model=model,
            model_version=model_version,
            step=step,
            dtype=dtype,
        )
        resp = await self._unary(self._stub.ImportState, req, timeout, session_id)
        return SessionInfo.from_proto(resp)

    # -- stepping ----------------------------------------------------------

    async def step(
        self,
        session_id: str,
        inputs: Inputs,
        *,
        expected_step: int | None = None,
        request_id: str | None = None,
        start: bool = False,
        model: str = "",
        model_version: str = "",
        reset: bool = False,
        end: bool = False,
        output_mode: OutputMode = "last",
        return_state: bool = False,
        idle_ttl: float | None = None,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> StepOutput:
        """One step of a session by id (see ``Client.step``)."""
        call = StepCall(
            session_id=session_id,
            inputs=inputs,
            expected_step=expected_step,
            request_id=request_id,
            start=start,
            model=model,
            model_version=model_version,
            reset=reset,
            end=end,
            output_mode=output_mode,
            return_state=return_state,
            idle_ttl=idle_ttl,
            dtype=dtype,
        )
        kind = (
            await self._input_kind(model, model_version) if model and needs_kind(inputs) else None
        )
        return await self._step_proto(call.to_proto(kind), timeout)

    async def step_many(
        self, items: Sequence[AsyncStepItem], *, timeout: float | None = None
    ) -> list[StepManyResult]:
        """Steps of many sessions in one message (see ``Client.step_many``)."""
        requests: list[pb.StepRequest] = []
        handles: list[AsyncSession | None] = []
        predicted: dict[int, int] = {}
        for item in items:
            if isinstance(item, StepCall):
                kind = None
                if item.model and needs_kind(item.inputs):
                    kind = await self._input_kind(item.model, item.model_version)
                requests.append(item.to_proto(kind))
                handles.append(None)
            else:
                sess, inputs = item
                kind = (
                    await self._input_kind(sess.model, sess.model_version)
                    if needs_kind(inputs)
                    else None
                )
                # A handle may appear more than once (its steps apply in
                # order): each item expects the counter after the previous one.
                expected = predicted.get(id(sess), sess.step_count)
                req = StepCall(sess.session_id, inputs, expected_step=expected).to_proto(kind)
                predicted[id(sess)] = expected + timesteps(req.inputs)
                requests.append(req)
                handles.append(sess)
        safe = all(r.HasField("expected_step") and r.request_id for r in requests)
        resp = await self._unary(
            self._stub.StepMany, pb.StepManyRequest(steps=requests), timeout, idempotent=safe
        )
        return _step_many_results(resp, requests, handles)

    def stream(
        self, *, timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> AsyncStepStream:
        """A pipelined stream: ``async with client.stream() as s: await s.step(sess, x)``."""
        return AsyncStepStream(
            self,
            self._stub.StreamSteps,
            self._metadata,
            self.retry_policy,
            timeout=timeout,
            max_in_flight=max_in_flight,
        )

    # -- internals -----------------------------------------------------------

    async def _step_proto(self, req: pb.StepRequest, timeout: float | None) -> StepOutput:
        safe = req.HasField("expected_step") and bool(req.request_id)
        resp = await self._unary(self._stub.Step, req, timeout, req.session_id, idempotent=safe)
        return StepOutput.from_proto(resp)

    async def _input_kind(self, model: str, version: str) -> InputKind | None:
        """The model's input kind, fetched once per model; None if unknown."""
        key = (model, version)
        if key in self._kinds:
            return self._kinds[key]
        try:
            info = await self.get_model(model, version)
        except SeqinferError:
            return None
        kind: InputKind | None = (
            info.input_kind if info.input_kind in ("dense", "tokens") else None  # type: ignore[assignment]
        )
        self._kinds[key] = kind
        return kind

    async def _unary(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        session_id: str | None = None,
        *,
        idempotent: bool = True,
        recover: Callable[[int, SeqinferError], Awaitable[Any]] | None = None,
    ) -> Any:
        metadata = call_metadata(self._metadata, self._options, session_id)

        async def attempt(n: int, attempt_timeout: float | None) -> Any:
            try:
                return await method(request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if recover is not None:
                    recovered = await recover(n, error)
                    if recovered is not None:
                        return recovered
                raise error from exc

        effective = timeout if timeout is not None else self.timeout
        return await acall_with_retry(attempt, self.retry_policy, effective, idempotent=idempotent)
