"""Tiering: more sessions than the device holds, the idle ones kept in the state store.

With durability on, a model's sessions live in two tiers (``sessions``): on
the device, owning a slot of the slab, or in the store, where only a small
bookkeeping entry (ids, counter, TTL, last use) stays in memory. When a
session needs a slot and the slab is at its bound (``device_sessions``, or
the memory it may not grow past), the least recently used *idle* sessions
(nothing queued or computing, not closing) are **spilled**: held, their
states read on the worker, written to the store as records (one transaction
for the group, through ``Durability``'s one store thread, so it is ordered
with commits and snapshots), and only then do they give up their slots. A
session that got a step while it was being spilled keeps its slot.

A step (or Export, Fork, Import) on a session in the store **restores** it:
the session is held at once, so its steps queue in order behind the
restore; the restorer reads its record (on the store thread, after any
spill of it), checks it (checksum, model, dtype, shape) off the loop, takes
a slot (spilling others if need be), scatters the state on the worker, sets
counter and replay record through ``Scheduler.restore`` (the scheduler stays
their only writer) and releases the session, whose steps then run. What a
step sees is what it would have seen had the session stayed on the device,
``expected_step`` and replays included.

When the restore cannot happen: a store that fails to read gives the
queued steps STORE_UNAVAILABLE (retryable) and leaves the session in the
store tier, so nothing is lost and the next step tries again; a record that
is missing or does not check is refused with a warning naming the session,
its steps get SESSION_NOT_FOUND saying why, the session leaves the table
(the record stays in the store, as an eager restore leaves a refused one).

A lazy restore (``lazy_restore``, setting ``restore: lazy``) is this path
from the start: every session registered in the store tier from its
record's header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import islice
from typing import TYPE_CHECKING

from seqinfer.service.durability import Durability, _to_tensors
from seqinfer.service.errors import SeqinferError, SessionNotFound, StoreUnavailable, echo
from seqinfer.service.observer import Observer
from seqinfer.service.record_batch import encode_batch
from seqinfer.service.records import RecordError, SessionRecord, check_fits
from seqinfer.service.sessions import Session

if TYPE_CHECKING:
    from seqinfer.service.runtime import ModelRuntime

log = logging.getLogger(__name__)
# Sessions spilled together at least (one store transaction), so that a stream
# of new sessions does not cost one transaction each; a small slab spills less.
SPILL_GROUP = 64
# Seconds between looks for an idle session while every device session has work.
SETTLE_CHECK = 0.05
# Records read and restored in one go.
RESTORE_GROUP = 256


class Tiering:
    """One model's two tiers: spills to the store, restores from it."""

    def __init__(self, runtime: ModelRuntime, durability: Durability, observer: Observer) -> None:
        self.runtime = runtime
        self.table = runtime.table
        self.slab = runtime.slab
        self.scheduler = runtime.scheduler
        self.durability = durability
        self.observer = observer
        self.group = max(1, min(SPILL_GROUP, self.slab.max_capacity // 8))
        self._wanted: dict[str, Session] = {}  # held, waiting for their records
        self._since: dict[str, float] = {}  # when each was wanted: restore latency
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._spilling: set[asyncio.Future[None]] = set()  # spills in flight, ended when done
        self.spilled = 0
        self.restored = 0
        self.table.enable_tiers()
        runtime.tiering = self
        durability.tierings[runtime.key] = self

    @property
    def in_store(self) -> int:
        return len(self.table) - self.table.device_count

    def device_room(self) -> int:
        """Slots a restore at start may fill (the rest of the sessions stay in the store)."""
        return max(0, self.slab.max_capacity - self.table.device_count)

    # ------------------------------------------------------ known at start --

    def add_record(self, record: SessionRecord) -> Session:
        """A session of the store registered without its state, from its record."""
        return self.add_in_store(
            record.session_id,
            record.tenant,
            record.step,
            record.idle_ttl,
            record.created_at,
            record.last_used,
        )

    def add_in_store(
        self,
        session_id: str,
        tenant: str,
        step: int,
        idle_ttl: float,
        created_at: float,
        last_used_wall: float,
        clocks: tuple[float, float] | None = None,
    ) -> Session:
        """A session of the store registered without its state. ``clocks``: (wall,
        monotonic) now, read once by a caller registering many."""
        now_wall, now = clocks or (time.time(), time.monotonic())
        # Idle time goes on across the downtime, as for an eager restore.
        last_used = now - max(0.0, now_wall - last_used_wall)
        session = self.table.add_in_store(session_id, tenant, idle_ttl, created_at, last_used)
        self.scheduler.restore(session, step, "", -1, None)
        self.durability.remember(session.key, (step, last_used))
        return session

    # -------------------------------------------------------------- spill --

    async def make_room(self, need: int) -> bool:
        """Spill until a slot is free (waiting, while every device session has work,
        for one to be idle); False when there is no device session to spill at all."""
        table = self.table
        while not self.slab.has_free():
            victims = table.spill_candidates(max(need, self.group))
            if victims:
                await self._spill(victims)
            elif self._spilling:
                # The idle ones are being spilled by another caller: wait for one to end.
                await asyncio.wait(set(self._spilling), return_when=asyncio.FIRST_COMPLETED)
            elif not table.device_count:
                return False
            else:
                # Every device session has work (e.g. one StepMany opening more sessions
                # than device_sessions): wait for a step to complete, then look again.
                # The timeout re-checks what completes without a step (a cancelled one).
                settled = table.settled or asyncio.Event()
                table.settled = settled
                try:
                    await asyncio.wait_for(settled.wait(), SETTLE_CHECK)
                except TimeoutError:
                    pass
                if table.settled is settled:
                    table.settled = None
        return True

    async def _spill(self, victims: list[Session]) -> int:
        """Write these idle device sessions to the store and free their slots; returns
        how many were freed (one that got a step meanwhile keeps its slot)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spilling.add(ended)
        try:
            return await self._spill_now(victims)
        finally:
            self._spilling.discard(ended)
            ended.set_result(None)

    async def _spill_now(self, victims: list[Session]) -> int:
        taken, slots = self.durability._take(victims, True)
        queues = self.scheduler.queues
        for victim in victims:
            queues.hold(victim)  # in this turn, before any of their steps can run
        spec = self.runtime.spec
        markers = {t.key: (t.step, t.last_used) for t in taken}
        try:
            states = await asyncio.wrap_future(self.runtime.submit_read(slots))
            stale = await self.durability.submit_write(
                lambda: encode_batch(spec, taken, states), [], markers
            )
        except Exception as exc:
            for victim in victims:
                self.scheduler.release(victim)
            log.warning("%s: could not spill %d sessions: %s", self.runtime.key, len(victims), exc)
            raise StoreUnavailable(
                "the state store could not take idle sessions to make room; nothing was "
                "applied, retry"
            ) from exc
        freed = 0
        for victim in victims:
            # One the store refused as stale is not in it: it keeps its slot.
            written = victim.key in markers and victim.key not in stale
            if written and not victim.pending and victim.close_waiter is None and not victim.closed:
                # Its replay record is in the store with its state: memory holds neither.
                self.scheduler.restore(victim, victim.step, "", -1, None)
                self.runtime.release_slot(self.table.to_store(victim))
                freed += 1
            self.scheduler.release(victim)  # one stepped meanwhile keeps its slot
        self.spilled += freed
        self.observer.sessions_spilled(self.runtime.key, freed)
        return freed

    # ------------------------------------------------------------ restore --

    def bring_back(self, session: Session) -> None:
        """Start restoring a session of the store tier (synchronously: its steps
        queued from now on wait behind the restore)."""
        if session.slot >= 0 or session.busy or session.closed:
            return  # on the device, or already on its way back
        self.scheduler.queues.hold(session)
        self._wanted[session.key] = session
        self._since[session.key] = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._restore_loop(), name=f"restore:{self.runtime.key}"
            )

    async def ensure_device(self, session: Session) -> None:
        """Return once the session holds a slot (Export, Fork, Import need its state)."""
        while session.slot < 0 and not session.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(session.key, []).append(waiter)
            self.bring_back(session)
            await waiter

    async def _restore_loop(self) -> None:
        while self._wanted:
            keys = list(islice(self._wanted, RESTORE_GROUP))
            group = [self._wanted.pop(key) for key in keys]
            try:
                await self._restore(group)
            except Exception as exc:  # ours, not the caller's: this group only
                log.exception("%s: restoring %d sessions failed", self.runtime.key, len(group))
                for session in group:
                    if session.slot < 0:
                        self._not_now(session, StoreUnavailable(f"restore failed: {exc}"))

    async def _restore(self, group: list[Session]) -> None:
        try:
            rows = await self.durability.read([s.key for s in group])
        except Exception as exc:
            log.warning(
                "%s: the state store could not be read to restore %d sessions: %s",
                self.runtime.key,
                len(group),
                exc,
            )
            for session in group:
                self._not_now(
                    session,
                    StoreUnavailable(
                        f"session {echo(session.session_id)} is in the state store, which could "
                        "not be read; nothing was applied, retry"
                    ),
                )
            return
        spec = self.runtime.spec
        checked = await asyncio.to_thread(self._check, group, rows)
        good: list[tuple[Session, SessionRecord]] = []
        for session, outcome in zip(group, checked):
            if isinstance(outcome, RecordError):
                self._lost(session, outcome)
            else:
                good.append((session, outcome))
        slots = await self._slots(len(good))
        for session, _ in good[len(slots) :]:
            self._not_now(
                session,
                StoreUnavailable(
                    f"no slot could be freed to restore session {echo(session.session_id)} "
                    "(every device session has work); nothing was applied, retry"
                ),
            )
        good = good[: len(slots)]
        if not good:
            return
        records = [record for _, record in good]
        states, replies = await asyncio.to_thread(_to_tensors, spec, records)
        await self.runtime.scatter(slots, states)
        now = time.monotonic()
        for (session, record), slot, reply in zip(good, slots, replies):
            self.table.to_device(session, slot)
            replay = record.replay
            self.scheduler.restore(
                session,
                record.step,
                "" if replay is None else replay.request_id,
                -1 if replay is None else replay.step_before,
                reply,
            )
            self.restored += 1
            self.observer.session_restored(
                self.runtime.key, now - self._since.pop(session.key, now)
            )
            self.scheduler.release(session)
            self._wake(session.key, None)

    def _check(
        self, group: list[Session], rows: dict[str, bytes]
    ) -> list[SessionRecord | RecordError]:
        spec = self.runtime.spec
        shape = (spec.num_layers, spec.hidden_size)
        out: list[SessionRecord | RecordError] = []
        for session in group:
            data = rows.get(session.key)
            try:
                if data is None:
                    raise RecordError(session.session_id, "no record in the state store")
                record = SessionRecord.decode(data, session.key)
                check_fits(record, spec.name, spec.version, spec.dtype, shape)
                out.append(record)
            except RecordError as bad:
                out.append(bad)
        return out

    async def _slots(self, count: int) -> list[int]:
        """Up to ``count`` free slots, taken; growing the slab or spilling for them."""
        slots: list[int] = []
        while len(slots) < count:
            if self.slab.has_free():
                slots.append(self.slab.take())
            elif self.slab.needs_growth():
                await self.runtime.ensure_free_slot()
            elif not await self.make_room(count - len(slots)):
                break
        return slots

    def _not_now(self, session: Session, error: SeqinferError) -> None:
        """Restore failed for now: its steps refused (retryable), it stays in the store."""
        self._since.pop(session.key, None)
        self.scheduler.fail_pending(session, error)
        self._wake(session.key, error)
        self.scheduler.release(session)

    def _lost(self, session: Session, error: RecordError) -> None:
        """A record that cannot come back: refused by name, the session leaves the table."""
        log.warning("session not restored: %s", error)
        self._since.pop(session.key, None)
        refusal = SessionNotFound(
            f"session {echo(session.session_id)} could not be restored from the state store "
            f"({error.reason}); it is lost",
            session_id=session.session_id,
        )
        self.scheduler.fail_pending(session, refusal)
        self._wake(session.key, refusal)
        # Left in the store, as an eager restore leaves a refused record.
        self.durability.remember(session.key, None)
        self.scheduler.release(session)
        self.runtime.end_session(session, "refused")

    def _wake(self, key: str, error: SeqinferError | None) -> None:
        for waiter in self._waiters.pop(key, ()):
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
