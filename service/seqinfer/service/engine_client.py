"""The engine behind the seam: ``EngineClient`` and its in-process implementation.

The gRPC side holds an ``EngineClient`` and nothing else of the engine: it
sends the commands of ``protocol`` and gets its replies. ``LocalEngine``
runs them in this process, on the models' runtimes; a client that carries
the same messages to an engine process can replace it without a change on
either side (the next step of the design: several front-end processes
feeding one engine per device).

Session ids are unique across the models of a server, so a command that
names a session needs no model. Every rule about sessions (admission,
exactly-once, TTL, draining) is enforced on this side, in plain data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from seqinfer.service import inputs, replies
from seqinfer.service.admission import Admission, too_large_reply
from seqinfer.service.bounds import check_step, check_ttl
from seqinfer.service.config import Settings
from seqinfer.service.errors import (
    InvalidInput,
    SeqinferError,
    SessionExists,
    draining,
    internal,
)
from seqinfer.service.observer import Observer
from seqinfer.service.protocol import (
    ExportReply,
    ForkCommand,
    ImportCommand,
    ModelInfo,
    OpenCommand,
    SessionInfo,
    StepBatch,
    StepBatchReply,
    StepCommand,
    StepOutcome,
)
from seqinfer.service.router import Router, check_session_id
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import Session
from seqinfer.service.tenants import Tenant
from seqinfer.service.tensors import PROTO_DTYPES, to_wire
from seqinfer.service.work import BatchSink

log = logging.getLogger(__name__)


class Admitted(NamedTuple):
    """A queued step: its reply to come, and the bytes it holds until that reply is sent
    (inputs plus the reply's bound), which a stream counts against its limits."""

    future: asyncio.Future[StepOutcome]
    held_bytes: int


class EngineClient(Protocol):
    async def models(self, tenant: str = "") -> list[ModelInfo]: ...
    async def model(self, name: str, version: str = "", tenant: str = "") -> ModelInfo: ...
    async def open(self, command: OpenCommand) -> SessionInfo: ...
    async def get(self, session_id: str, tenant: str = "") -> SessionInfo: ...
    async def close(self, session_id: str, tenant: str = "") -> int: ...
    async def fork(self, command: ForkCommand) -> SessionInfo: ...
    async def export(self, session_id: str, tenant: str = "") -> ExportReply: ...
    async def import_state(self, command: ImportCommand) -> SessionInfo: ...
    def try_step(self, command: StepCommand) -> Admitted | None:
        """Queue a step now, or None when it must wait (then ``step``)."""
        ...

    async def step(self, command: StepCommand) -> Admitted: ...
    async def step_batch(self, batch: StepBatch) -> StepBatchReply: ...


class LocalEngine:
    """``EngineClient`` in this process: the models' runtimes, driven on this event loop."""

    def __init__(
        self,
        runtimes: list[ModelRuntime],
        settings: Settings,
        observer: Observer,
        default_model: str,
        tenants: Mapping[str, Tenant] | None = None,
    ) -> None:
        """``tenants``: the quotas by tenant name (none: no quotas)."""
        self.runtimes = runtimes
        self.settings = settings
        self.router = Router(runtimes, default_model, _allowed(tenants or {}))
        self.draining = False
        self.admission = Admission(self.router, settings, observer, lambda: self.draining, tenants)

    def set_tenants(self, tenants: Mapping[str, Tenant]) -> None:
        """Quotas and model lists from a re-read token file (SIGHUP); sessions stay as they are."""
        self.router.allowed = _allowed(tenants)
        self.admission.set_tenants(tenants)

    def begin_drain(self) -> None:
        """From now on, work that would add to a session is refused (DRAINING)."""
        self.draining = True

    def _check_open(self) -> None:
        if self.draining:
            raise draining()

    def _check_id(
        self, session_id: str, field: str = "session_id", *, required: bool = True
    ) -> int:
        return check_session_id(
            session_id, field, self.settings.max_session_id_bytes, required=required
        )

    # ------------------------------------------------------------ models --

    async def models(self, tenant: str = "") -> list[ModelInfo]:
        return [self._model_info(r) for r in self.router.visible(tenant)]

    async def model(self, name: str, version: str = "", tenant: str = "") -> ModelInfo:
        return self._model_info(self.router.model(name, version, tenant))

    def _model_info(self, runtime: ModelRuntime) -> ModelInfo:
        spec = runtime.spec
        return ModelInfo(
            name=spec.name,
            version=spec.version,
            input_kind=spec.input_kind.value,
            input_size=spec.input_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            output_kind=spec.output_kind.value,
            output_size=spec.out_features,
            dtype=PROTO_DTYPES[spec.torch_dtype],
            device=str(runtime.device),
            description=spec.description,
            max_timesteps=self.settings.max_timesteps,
            max_sessions=runtime.table.max_sessions,
            open_sessions=len(runtime.table),
            state_bytes_per_session=runtime.slab.bytes_per_session,
        )

    # ---------------------------------------------------------- sessions --

    @staticmethod
    def _info(runtime: ModelRuntime, session: Session) -> SessionInfo:
        return SessionInfo(
            session_id=session.session_id,
            model=runtime.spec.name,
            model_version=runtime.spec.version,
            step=session.step,
            created_at=session.created_at,
            last_used_at=session.last_used_wall(),
            idle_ttl=session.idle_ttl,
        )

    async def open(self, command: OpenCommand) -> SessionInfo:
        self._check_open()
        self._check_id(command.session_id, required=False)
        runtime = self.router.model(command.model, command.model_version, command.tenant)
        ttl = _ttl(command.idle_ttl)
        state = (
            None
            if command.initial_state is None
            else inputs.state_tensor(runtime.spec, command.initial_state, "initial_state")
        )
        tenant = command.tenant
        if command.session_id:
            self.router.ensure_unused(command.session_id, tenant)
        self.admission.check_session_quota(tenant)
        session = await runtime.create_session(command.session_id or None, ttl, state, tenant)
        return self._info(runtime, session)

    async def get(self, session_id: str, tenant: str = "") -> SessionInfo:
        self._check_id(session_id)
        return self._info(*self.router.find(session_id, tenant))

    async def close(self, session_id: str, tenant: str = "") -> int:
        self._check_id(session_id)
        runtime, session = self.router.find(session_id, tenant)
        # Queued behind the session's accepted work: see ModelRuntime.close_session.
        return await runtime.close_session(session)

    async def fork(self, command: ForkCommand) -> SessionInfo:
        self._check_open()
        self._check_id(command.session_id)
        self._check_id(command.new_session_id, "new_session_id", required=False)
        runtime, source = self.router.find(command.session_id, command.tenant)
        if command.new_session_id:
            self.router.ensure_unused(command.new_session_id, command.tenant)
        ttl = _ttl(command.idle_ttl)
        self.admission.check_session_quota(command.tenant)
        copy = await runtime.fork(source, command.new_session_id or None, ttl)
        return self._info(runtime, copy)

    async def export(self, session_id: str, tenant: str = "") -> ExportReply:
        id_bytes = self._check_id(session_id)
        runtime, session = self.router.find(session_id, tenant)
        size = replies.export_bytes(runtime.spec, id_bytes)
        limit = self.settings.max_message_bytes
        if size > limit:
            raise too_large_reply(size, limit, "the exported state")
        state = await runtime.export_state(session)
        return ExportReply(self._info(runtime, session), to_wire(state))

    async def import_state(self, command: ImportCommand) -> SessionInfo:
        self._check_open()
        self._check_id(command.session_id)
        if command.state is None:
            raise InvalidInput("state", "is required")
        step = None if command.step is None else check_step(command.step, "step")
        tenant = command.tenant
        try:
            runtime, session = self.router.find(command.session_id, tenant)
        except SeqinferError:
            if not command.create:
                raise
            runtime = self.router.model(command.model, command.model_version, command.tenant)
            state = inputs.state_tensor(runtime.spec, command.state, "state")
            self.admission.check_session_quota(tenant)
            session = await runtime.create_session(command.session_id, None, state, tenant)
            if step is not None:
                runtime.scheduler.set_counter(session, step)
            return self._info(runtime, session)
        if command.create and command.model:
            # The id is another model's session: importing would overwrite it
            # with a state meant for the named model.
            named = self.router.model(command.model, command.model_version, command.tenant)
            if named is not runtime:
                raise SessionExists(
                    f"session {command.session_id!r} already exists (model {runtime.key})",
                    session_id=command.session_id,
                )
        state = inputs.state_tensor(runtime.spec, command.state, "state")
        await runtime.import_state(session, state, step)
        return self._info(runtime, session)

    # ---------------------------------------------------------- stepping --

    def try_step(self, command: StepCommand) -> Admitted | None:
        item = self.admission.admit(command)
        if item is None:
            return None
        assert item.future is not None
        return Admitted(item.future, item.nbytes + item.reply_bytes)

    async def step(self, command: StepCommand) -> Admitted:
        admitted = self.try_step(command)
        while admitted is None:
            # Creating its session needs a bigger slab; grow (off the loop), retry.
            await self._grow(
                self.router.model(command.model, command.model_version, command.tenant)
            )
            admitted = self.try_step(command)
        return admitted

    async def step_batch(self, batch: StepBatch) -> StepBatchReply:
        """Every step of a StepMany, one reply each; cancelling drops the unapplied ones."""
        self.admission.check_batch_reply(batch)
        sink = BatchSink(asyncio.get_running_loop().create_future(), batch)
        if not len(batch):
            return StepBatchReply([])
        try:
            k = self.admission.admit_batch(batch, sink)
            while k < len(batch):
                try:
                    await self._grow(
                        self.router.model(batch.models[k], batch.model_versions[k], batch.tenant)
                    )
                except SeqinferError as error:
                    sink.deliver(k, error)
                    k += 1
                k = self.admission.admit_batch(batch, sink, k)
            return await sink.future
        except asyncio.CancelledError:
            sink.future.cancel()  # the steps still queued see it and are dropped unapplied
            raise

    async def _grow(self, runtime: ModelRuntime) -> None:
        try:
            await runtime.ensure_free_slot()
        except SeqinferError:
            raise  # e.g. CAPACITY_FULL, STORE_UNAVAILABLE from a spill: the caller's to retry
        except Exception as exc:  # e.g. out of memory: ours, reported as this step's error
            log.exception("could not grow the slab of %s", runtime.key)
            raise internal(exc) from exc


def _ttl(value: float | None) -> float | None:
    return None if value is None else check_ttl(value, "idle_ttl_seconds")


def _allowed(tenants: Mapping[str, Tenant]) -> dict[str, frozenset[str]]:
    """The model lists of the tenants that have one (the router's ``allowed``)."""
    return {name: t.models for name, t in tenants.items() if t.models is not None}
