"""The asyncio client: :class:`AsyncClient` mirrors :class:`~seqinfer.client.Client`.

Same methods, arguments, results, errors and retry rules (see
:mod:`seqinfer.client.client` for which calls are retried and why), but
every call is a coroutine and the channel is a ``grpc.aio`` channel. Create
it inside a running event loop. Both clients build their calls in
:mod:`seqinfer.client.calls`; this module is the public signatures plus the
awaited loop that sends a call (tests/unit/test_client_parity.py keeps the
two sets of signatures equal).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy.typing as npt

from seqinfer.client import calls
from seqinfer.client.aio_stream import AsyncStepStream
from seqinfer.client.batch import StepManyPlan, StepManyResult
from seqinfer.client.calls import Call
from seqinfer.client.core import UNKNOWN, ClientCore
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, from_rpc_error
from seqinfer.client.messages import Inputs, OutputMode, StepCall, step_options
from seqinfer.client.options import ChannelOptions, make_aio_channel
from seqinfer.client.retry import acall_with_retry
from seqinfer.client.session import AsyncSession, needs_kind
from seqinfer.client.spread import await_spread
from seqinfer.client.streamcore import DEFAULT_MAX_IN_FLIGHT
from seqinfer.client.tensors import DTypeLike, InputKind

R = TypeVar("R")

AsyncStepItem = StepCall | tuple[AsyncSession, Inputs]


class AsyncClient(ClientCore[grpc.aio.Channel]):
    """An asyncio connection to a seqinfer server; see ``Client`` for the arguments."""

    _spread_task: asyncio.Future[int] | None = None  # the first call's ``addresses`` wait

    def _open_channel(
        self, address: str, options: ChannelOptions, credentials: grpc.ChannelCredentials | None
    ) -> grpc.aio.Channel:
        return make_aio_channel(address, options, credentials)

    async def _spread(self) -> None:
        """Before the first call over ``addresses``: wait until each address answers."""
        if self._spread_task is None:  # the first caller starts the probes; all await them
            assert self.addresses is not None
            count = len(set(self.addresses))
            self._spread_task = asyncio.ensure_future(
                await_spread(self._channel, count, self.ready_timeout)
            )
        await asyncio.shield(self._spread_task)
        self._spread_pending = False

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
        return await self.send(calls.list_models(), timeout=timeout)

    async def get_model(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> ModelInfo:
        """One model; ``version`` "" means the newest."""
        return await self.send(calls.get_model(name, version), timeout=timeout)

    async def input_kind(self, model: str, version: str = "") -> InputKind | None:
        """The model's input kind, asked once per model; None if unknown (see ``Client``)."""
        kind = self._kinds.get(model, version)
        if kind is not UNKNOWN:
            return kind
        try:
            info = await self.get_model(model, version)
        except SeqinferError:
            return None  # let the server judge the inputs
        return self._kinds.put(model, version, info.input_kind)

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
        call = calls.open_session(
            model, session_id, model_version=model_version, initial_state=initial_state,
            idle_ttl=idle_ttl,
        )  # fmt: skip
        return AsyncSession(self, await self.send(call, timeout=timeout))

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
        call = calls.open_session(
            model, session_id, model_version=model_version, initial_state=initial_state,
            idle_ttl=idle_ttl,
        )  # fmt: skip
        async with AsyncSession(self, await self.send(call, timeout=timeout)) as sess:
            yield sess

    async def attach(self, session_id: str, *, timeout: float | None = None) -> AsyncSession:
        """A handle for an existing session (its counter read from the server)."""
        return AsyncSession(self, await self.get_session(session_id, timeout=timeout))

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """A session's info, including its step counter."""
        return await self.send(calls.get_session(session_id), timeout=timeout)

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Closes a session; returns the step counter it had."""
        return await self.send(calls.close_session(session_id), timeout=timeout)

    async def fork_session(
        self,
        session_id: str,
        new_id: str | None = None,
        *,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> AsyncSession:
        """Copies a session's state and counter into a new session; returns its handle."""
        info = await self.send(calls.fork_session(session_id, new_id, idle_ttl), timeout=timeout)
        return AsyncSession(self, info)

    async def export_state(self, session_id: str, *, timeout: float | None = None) -> ExportedState:
        """``(state, info)``: the hidden state and the session."""
        return await self.send(calls.export_state(session_id), timeout=timeout)

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
        call = calls.import_state(
            session_id, state, create=create, model=model, model_version=model_version,
            step=step, dtype=dtype,
        )  # fmt: skip
        return await self.send(call, timeout=timeout)

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
        step = StepCall(session_id, inputs, **step_options(locals()))
        kind = await self.input_kind(model, model_version) if model and needs_kind(inputs) else None
        return await self.send(calls.step(step.to_proto(kind)), timeout=timeout)

    async def step_many(
        self, items: Sequence[AsyncStepItem], *, timeout: float | None = None
    ) -> list[StepManyResult]:
        """Steps of many sessions in one message (see ``Client.step_many``)."""
        plan = StepManyPlan(items)
        kinds = {key: await self.input_kind(*key) for key in plan.kinds_needed()}
        return await self.send(plan.call(kinds), timeout=timeout)

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
            ready=self._spread if self._spread_pending else None,
        )

    # -- I/O -------------------------------------------------------------------

    async def send(self, call: Call[R], *, timeout: float | None = None) -> R:
        """Sends one prepared call, with retries, and returns its decoded reply."""
        if self._spread_pending:
            await self._spread()
        method = getattr(self._stub, call.method)
        metadata = self._call_metadata(call.session_id)

        async def attempt(n: int, attempt_timeout: float | None) -> Any:
            try:
                return await method(call.request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                stand_in = call.adoption(n, error)
                if stand_in is None:
                    raise error from exc
                return await self.send(stand_in, timeout=timeout)

        reply = await acall_with_retry(
            attempt, self.retry_policy, self._deadline(timeout), idempotent=call.idempotent
        )
        return call.decode(reply)
