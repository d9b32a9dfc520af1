"""Admission: a step command becomes a queued ``StepItem``, or a clear refusal.

Everything a step request must pass before the scheduler sees it happens
here, on the engine side, in plain data: id and number bounds, finding the
session (or creating it for ``start``), the inputs checked against that
session's model, the reply's size bound, the queue bounds (the scheduler's
``submit``), and rolling back a session created for a step that was then
refused. Rejections are counted here, by reason, except QUEUE_FULL, which
the scheduler counts as backpressure.

Two entries share one per-step path (``_admit``): ``admit`` for a single
``StepCommand``, and ``admit_batch`` for a StepMany's ``StepBatch``, whose
inputs are decoded and checked column-wise first (one join, one view, one
finiteness check per model and dtype: ``inputs.batch_inputs``) and whose
replies go to one ``BatchSink``. Either returns None/the step's index when
a new session must wait for the slab to grow; the caller grows it
(``ModelRuntime.ensure_free_slot``, off the loop) and calls again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from seqinfer.service import inputs, replies
from seqinfer.service.bounds import check_request_id, check_step, check_ttl
from seqinfer.service.config import Settings
from seqinfer.service.errors import (
    CapacityFull,
    Draining,
    InvalidInput,
    SeqinferError,
    TenantQuota,
    TooLarge,
    draining,
    internal,
)
from seqinfer.service.observer import Observer
from seqinfer.service.protocol import StepBatch, StepCommand, StepOutcome, TensorData
from seqinfer.service.router import Router, check_session_id
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import Session
from seqinfer.service.tenants import StepRate, Tenant, session_key
from seqinfer.service.work import BatchSink, StepItem

log = logging.getLogger(__name__)

_REJECTIONS: dict[type[SeqinferError], str] = {
    CapacityFull: "capacity",
    Draining: "draining",
    TenantQuota: "quota",
}


def too_large_reply(size: int, limit: int, what: str) -> TooLarge:
    return TooLarge(
        "reply",
        f"{what} would be up to {size} bytes, over max_message_bytes = {limit}; "
        "nothing was applied",
        reply_bytes=size,
        max_message_bytes=limit,
    )


class Admission:
    def __init__(
        self,
        router: Router,
        settings: Settings,
        observer: Observer,
        draining: Callable[[], bool],
        tenants: Mapping[str, Tenant] | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.observer = observer
        self._draining = draining
        self._loop = asyncio.get_running_loop()
        self._reply_shapes = {r.key: replies.reply_shape(r.spec) for r in router.runtimes}
        self._many_bound = replies.MessageBound.of(r.spec for r in router.runtimes)
        self.tenants: Mapping[str, Tenant] = {}
        self._rates: dict[str, StepRate] = {}
        self._queue_quotas: dict[str, tuple[int, int]] = {}
        self.set_tenants(tenants or {})

    def set_tenants(self, tenants: Mapping[str, Tenant]) -> None:
        """The quotas from now on (a token file re-read on SIGHUP).

        A tenant whose steps-per-second rate is unchanged keeps its bucket, so
        that a reload neither refills it nor forgives its debt; sessions and
        queued steps are not touched (a tenant now over its max_sessions keeps
        the sessions it has and opens no more).
        """
        settings = self.settings
        self.tenants = dict(tenants)
        rates: dict[str, StepRate] = {}
        for name, t in self.tenants.items():
            if t.steps_per_second > 0:
                kept = self._rates.get(name)
                if kept is None or kept.rate != t.steps_per_second:
                    kept = StepRate(t.steps_per_second)
                rates[name] = kept
        self._rates = rates
        # (max queued requests, max queued bytes) by tenant; 0 = that one unbounded.
        self._queue_quotas = {
            name: (
                t.max_queued or settings.tenant_max_queued,
                t.max_queued_bytes or settings.tenant_max_queued_bytes,
            )
            for name, t in self.tenants.items()
            if t.max_queued
            or t.max_queued_bytes
            or settings.tenant_max_queued
            or settings.tenant_max_queued_bytes
        }

    def check_session_quota(self, tenant: str) -> None:
        """Refuse a new session of a tenant at its open-sessions quota."""
        quota = self.tenants.get(tenant)
        if quota is None or not quota.max_sessions:
            return
        open_now = sum(r.table.open_by_tenant[tenant] for r in self.router.runtimes)
        if open_now >= quota.max_sessions:
            raise TenantQuota(
                f"tenant {tenant!r} has {open_now} sessions open, its quota is "
                f"{quota.max_sessions}; close one first",
                quota="max_sessions",
                limit=quota.max_sessions,
            )

    def check_queue_quota(self, tenant: str, size: int) -> None:
        """Refuse a step of a tenant at its queued-requests or queued-bytes quota.

        Counted over every model, from the queues' own per-tenant counts; like
        the model's bounds, a request always fits when the tenant has nothing queued.
        """
        max_queued, max_bytes = self._queue_quotas[tenant]
        queues = [r.scheduler.queues for r in self.router.runtimes]
        queued = sum(q.tenant_depth[tenant] for q in queues)
        if not queued:
            return
        nbytes = sum(q.tenant_bytes[tenant] for q in queues)
        if max_queued and queued >= max_queued:
            quota, limit, what = "max_queued", max_queued, f"{queued} requests"
        elif max_bytes and nbytes + size > max_bytes:
            quota, limit, what = "max_queued_bytes", max_bytes, f"{nbytes} input bytes"
        else:
            return
        # About when one of its queued steps will have been taken (its share of the drain).
        wait = max(
            0.001, max(q.expected_wait(tenant) / (q.tenant_depth[tenant] + 1) for q in queues)
        )
        raise TenantQuota(
            f"tenant {tenant!r} has {what} queued, its quota {quota} is {limit}; "
            f"nothing was applied, retry in {wait:.3f} s",
            quota=quota,
            limit=limit,
            retry_after_seconds=f"{wait:.3f}",
        )

    # ------------------------------------------------------------ single --

    def admit(self, command: StepCommand) -> StepItem | None:
        """Queue one step; None when its new session must wait for slab growth.

        The hot path: a coroutine per request would cost more than the checks.
        Raises only SeqinferError: a fault of ours becomes INTERNAL for this
        request alone, so a stream still answers it.
        """
        c = command
        return self._admit(
            c.session_id, c.request_id, c.model, c.model_version, c.start, c.idle_ttl,
            c.expected_step, c.reset, c.end, c.output_mode, c.return_state, c.inputs,
            None, c.deadline, self._loop.create_future(), None, 0, c.tenant,
        )  # fmt: skip

    # ------------------------------------------------------------- batch --

    def check_batch_reply(self, batch: StepBatch) -> None:
        """Refuse, before anything is applied, a StepMany whose results could not all be sent."""
        limit = self.settings.max_message_bytes
        if self._many_bound.reply_bytes(len(batch), batch.wire_bytes) <= limit:
            return
        total = sum(replies.batch_estimates(batch, self.router, self._reply_shapes, self.settings))
        if total > limit:
            raise too_large_reply(total, limit, f"the results of these {len(batch)} steps")

    def admit_batch(self, batch: StepBatch, sink: BatchSink, start: int = 0) -> int:
        """Queue steps ``start..`` of a batch, replies into ``sink``.

        Returns ``len(batch)`` when all are queued or answered, else the index
        of a step whose new session waits for slab growth.
        """
        tenant = batch.tenant

        def model_of(session_id: str, start: bool, model: str, version: str) -> ModelRuntime:
            return self._model_of(tenant, session_id, start, model, version)

        decoded = inputs.batch_inputs(
            batch,
            start,
            model_of,
            max_timesteps=self.settings.max_timesteps,
            allow_non_finite=self.settings.allow_non_finite_inputs,
        )
        b = batch
        deadline = b.deadline
        for k in range(start, len(b)):
            try:
                item = self._admit(
                    b.session_ids[k], b.request_ids[k], b.models[k], b.model_versions[k],
                    b.starts[k], b.idle_ttls[k], b.expected_steps[k], b.resets[k], b.ends[k],
                    b.output_modes[k], b.return_states[k], None, decoded[k - start], deadline,
                    None, sink, k, tenant,
                )  # fmt: skip
            except SeqinferError as error:
                sink.deliver(k, error)
                continue
            if item is None:
                return k
        return len(b)

    def _model_of(
        self, tenant: str, session_id: str, start: bool, model: str, version: str
    ) -> ModelRuntime:
        """The runtime a step will run on (for decoding its inputs); raises if none."""
        if session_id:
            key = session_key(tenant, session_id)
            for runtime in self.router.runtimes:
                if key in runtime.table.by_id:
                    return runtime
        if not start:
            raise self.router.missing(session_id, tenant)
        return self.router.model(model, version, tenant)

    # ----------------------------------------------------------- one step --

    def _admit(
        self,
        session_id: str,
        request_id: str,
        model: str,
        model_version: str,
        start: bool,
        idle_ttl: float | None,
        expected_step: int | None,
        reset: bool,
        end: bool,
        output_mode: int,
        return_state: bool,
        tensor: TensorData | None,
        decoded: inputs.Decoded,
        deadline: float | None,
        future: asyncio.Future[StepOutcome] | None,
        sink: BatchSink | None,
        index: int,
        tenant: str,
    ) -> StepItem | None:
        """Check, find or create the session, queue.

        ``tensor`` is the step's inputs as sent, or None for a StepMany step,
        whose inputs ``decoded`` holds (``inputs.batch_inputs``) and are
        taken from ``sink``'s batch again only if the session turned out to
        belong to another model than the one they were decoded for.
        """
        try:
            settings = self.settings
            max_id = settings.max_session_id_bytes
            if session_id.isascii() and 0 < len(session_id) <= max_id and session_id.isprintable():
                id_bytes = len(session_id)  # the usual id, checked without a call
            else:
                id_bytes = check_session_id(session_id, "session_id", max_id, required=not start)
            if request_id:
                id_bytes += check_request_id(request_id, settings.max_request_id_bytes)
            runtime: ModelRuntime
            session: Session | None = None
            if session_id:
                key = session_key(tenant, session_id)
                for candidate in self.router.runtimes:
                    session = candidate.table.by_id.get(key)
                    if session is not None:
                        runtime = candidate
                        break
            if session is None:
                if not start:
                    raise self.router.missing(session_id, tenant)
                runtime = self.router.model(model, model_version, tenant)
            try:
                if self._draining():
                    raise draining()
                if decoded is not None and decoded[0] == runtime.key:
                    if isinstance(decoded[1], SeqinferError):
                        raise decoded[1]
                    values = decoded[1]
                else:
                    if tensor is None:
                        assert sink is not None
                        tensor = sink.batch_tensor(index)
                    values = inputs.step_inputs(
                        runtime.spec,
                        tensor,
                        max_timesteps=settings.max_timesteps,
                        allow_non_finite=settings.allow_non_finite_inputs,
                    )
                mode = inputs.OUTPUT_MODES.get(output_mode)
                if mode is None:
                    raise InvalidInput("output_mode", f"unknown value {output_mode}")
                if expected_step is not None:
                    expected_step = check_step(expected_step, "expected_step")
                timesteps = len(values)
                reply = replies.result_bytes(
                    self._reply_shapes[runtime.key], timesteps, mode, return_state, id_bytes
                )
                if reply > settings.max_message_bytes:
                    raise too_large_reply(
                        reply,
                        settings.max_message_bytes,
                        f"the reply ({mode.name} outputs of T = {timesteps})",
                    )
                if self._queue_quotas and tenant in self._queue_quotas:
                    self.check_queue_quota(tenant, values.nbytes)
                created = False
                if session is None:
                    ttl = None if idle_ttl is None else check_ttl(idle_ttl, "idle_ttl_seconds")
                    self.check_session_quota(tenant)
                    session = runtime.create_session_now(session_id or None, ttl, tenant)
                    if session is None:
                        return None
                    created = True
                rate = self._rates.get(tenant) if self._rates else None
                if rate is not None:
                    try:
                        rate.take(tenant, timesteps)
                    except TenantQuota:
                        if created:
                            runtime.end_session(session, "closed")
                        raise
                item = StepItem(
                    session, values, future, request_id, expected_step, reset, end, mode,
                    return_state, deadline, created, reply, sink, index,
                )  # fmt: skip
                if session.slot < 0 and runtime.tiering is not None:
                    runtime.tiering.bring_back(session)  # its steps queue behind the restore
                try:
                    runtime.scheduler.submit(item)
                except SeqinferError:
                    if rate is not None:
                        rate.give_back(timesteps)  # not applied: not counted
                    if created:  # don't leave behind a session its creator never stepped
                        runtime.end_session(session, "closed")
                    raise
                return item
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
