"""One served model on the engine side: compute, slab, session table, scheduler, worker.

Everything that touches slab contents goes to the model's worker
(``_on_worker``), in FIFO order with the batches, which is what keeps a
freed-and-reused slot from being written by a batch still in flight. The
session operations here (create, close, fork, export, import) are what
``engine_client`` calls; counters are written through the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from seqinfer.service.config import Settings, torch_thread_count
from seqinfer.service.engine import GRUEngine
from seqinfer.service.errors import CapacityFull, SeqinferError, SessionExpired, SessionNotFound
from seqinfer.service.models.spec import LoadedModel
from seqinfer.service.observer import Observer, RuntimeStats
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.records import SessionRecord
from seqinfer.service.scheduler import Scheduler
from seqinfer.service.sessions import Session, SessionTable
from seqinfer.service.slab import StateSlab
from seqinfer.service.worker import SerialWorker

if TYPE_CHECKING:
    from seqinfer.service.tiering import Tiering

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelRuntime:
    def __init__(
        self, model: LoadedModel, settings: Settings, device: torch.device, observer: Observer
    ) -> None:
        self.spec = model.spec
        self.key = model.spec.key
        self.device = device
        self.settings = settings
        self.observer = observer
        self.engine = GRUEngine(
            model,
            device,
            settings.long_chunk_threshold,
            precision=settings.precision,
            max_batch_size=settings.max_batch_size,
            cuda_graphs=settings.cuda_graphs,
        )
        seconds = self.engine.capture_graphs()
        if self.engine.static is not None and self.engine.static.captured:
            log.info(
                "%s: captured CUDA graphs for batch sizes %s in %.2f s",
                self.key,
                ",".join(map(str, self.engine.static.captured)),
                seconds,
            )
        # OpenMP's thread count is per thread: without this the engine thread
        # would start a full team that spins on the core the event loop needs.
        threads = torch_thread_count(settings)
        self.worker = SerialWorker(
            f"engine-{self.spec.name}", initializer=lambda: torch.set_num_threads(threads)
        )
        self.slab = StateSlab(
            self.engine,
            initial_capacity=settings.initial_capacity,
            # With tiers the slab holds device_sessions; max_sessions counts both tiers.
            max_capacity=min(settings.max_sessions, settings.device_sessions or 1 << 62),
            max_bytes=settings.max_state_bytes,
        )
        self.table = SessionTable(
            self.slab,
            self.release_slot,
            max_sessions=settings.max_sessions,
            eviction=settings.eviction,
            default_ttl=settings.idle_ttl_seconds,
        )
        self.scheduler = Scheduler(
            self.key,
            self.engine,
            self.slab,
            self.table,
            self.worker,
            max_batch_size=settings.max_batch_size,
            max_batch_delay=settings.max_batch_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            max_queue_bytes=settings.max_queue_bytes,
            max_session_queue_size=settings.max_session_queue_size,
            max_session_queue_bytes=settings.max_session_queue_bytes,
            max_queue_wait=settings.max_queue_wait_ms / 1000.0,
            # On CUDA the loop would wait for the kernels: always hand off.
            inline_max_timesteps=0 if device.type == "cuda" else settings.inline_max_timesteps,
            observer=observer,
            on_session_closed=self.end_session,
        )
        # Set by ``tiering.Tiering`` when sessions may live in the store too.
        self.tiering: Tiering | None = None
        self._grow_lock: asyncio.Lock | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # ----------------------------------------------------------- lifecycle --

    async def start(self) -> None:
        self._grow_lock = asyncio.Lock()
        self.scheduler.start()
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(), name=f"sweeper:{self.key}"
        )

    async def drain(self) -> None:
        await self.scheduler.drain()

    async def stop(self) -> None:
        await self.drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.worker.shutdown()

    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.worker.run(fn, *args)

    def release_slot(self, slot: int) -> None:
        # Free slots hold zeros, so a new session needs no worker round trip.
        # The zeroing queues behind any batch still using the slot and ahead
        # of anything its next owner does.
        self.worker.submit(self.slab.write, slot, None)
        self.slab.release(slot)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            for session in self.table.expired(time.monotonic()):
                self.end_session(session, "expired")

    # ------------------------------------------------------------ sessions --

    async def ensure_free_slot(self) -> None:
        """Grow the slab (on the worker) until a session could be created now; at
        its bound, with tiers, spill idle sessions to the store."""
        assert self._grow_lock is not None, "runtime not started"
        while self.slab.needs_growth():
            async with self._grow_lock:
                if self.slab.needs_growth():
                    await self._on_worker(self.slab.grow)
        if self.tiering is not None and not self.slab.has_free():
            if not await self.tiering.make_room(1):
                raise CapacityFull(
                    "the state slab has no slot for a session (device_sessions or "
                    "max_state_bytes allows none)",
                    max_sessions=self.table.max_sessions,
                )

    def create_session_now(
        self, session_id: str | None, idle_ttl: float | None, tenant: str = ""
    ) -> Session | None:
        """Open a zero-state session if no slab growth is needed first, else None."""
        if self.slab.needs_growth():
            return None
        table = self.table
        if (
            self.tiering is not None
            and not self.slab.has_free()
            and (len(table) < table.max_sessions or table.eviction == "lru")
        ):
            return None  # spill first (ensure_free_slot)
        session, evicted = self.table.create(session_id, idle_ttl, tenant)
        for victim in evicted:
            self.observer.session_ended(self.key, "evicted")
            log.info("evicted session %s from %s (LRU)", victim.session_id, self.key)
        self.observer.session_opened(self.key)
        return session

    async def create_session(
        self,
        session_id: str | None,
        idle_ttl: float | None,
        initial_state: torch.Tensor | None = None,
        tenant: str = "",
    ) -> Session:
        """Open a session on a free slot (growing the slab if needed); its state
        is ``initial_state`` or zeros."""
        session = self.create_session_now(session_id, idle_ttl, tenant)
        while session is None:
            await self.ensure_free_slot()
            session = self.create_session_now(session_id, idle_ttl, tenant)
        if initial_state is not None:
            await self._on_worker(self.slab.write, session.slot, initial_state)
        return session

    def end_session(self, session: Session, reason: str) -> None:
        """Remove a session: queued requests fail, the slot is freed."""
        if session.closed:
            return
        why: type[SessionNotFound] = SessionExpired if reason == "expired" else SessionNotFound
        self.table.remove(session, why)
        self.scheduler.fail_pending(session, self.table.missing(session.session_id, session.tenant))
        self.observer.session_ended(self.key, reason)
        waiter = session.close_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(session.step)

    async def close_session(self, session: Session) -> int:
        """Close after the session's accepted work; returns the final step counter.

        Requests received before the close are applied and answered first, so
        the counter returned includes them; later ones are refused
        (SESSION_NOT_FOUND). A caller that gives up waiting does not stop the
        close: it was decided when the request arrived.
        """
        if not session.busy and not session.pending and session.close_waiter is None:
            self.end_session(session, "closed")
            return session.step
        waiter = self.scheduler.close_after_work(session)
        return await asyncio.shield(waiter)

    async def fork(self, source: Session, new_id: str | None, idle_ttl: float | None) -> Session:
        ttl = source.idle_ttl if idle_ttl is None else idle_ttl
        if self.tiering is not None:
            # Through a copy of the state: making room for the fork may spill the source.
            state = await self.export_state(source)
            step = source.step
            copy = await self.create_session(new_id, ttl, state, tenant=source.tenant)
            self.scheduler.set_counter(copy, step)
            return copy
        copy = await self.create_session(new_id, ttl, tenant=source.tenant)
        await self._on_worker(self.slab.copy, source.slot, copy.slot)
        # Read after the copy: the worker ran it after any batch of the
        # source's that was in flight, whose completion has updated the counter.
        self.scheduler.set_counter(copy, source.step)
        return copy

    async def export_state(self, session: Session) -> torch.Tensor:
        if self.tiering is not None:
            await self.tiering.ensure_device(session)
        return await self._on_worker(self.slab.read, session.slot)

    async def import_state(self, session: Session, state: torch.Tensor, step: int | None) -> None:
        if self.tiering is not None:
            await self.tiering.ensure_device(session)
        await self._on_worker(self.slab.write, session.slot, state)
        self.scheduler.set_counter(session, session.step if step is None else step)
        self.table.touch(session)

    # ----------------------------------------------------------- durability --

    def submit_read(self, slots: list[int]) -> Future[torch.Tensor]:
        """The states of ``slots`` as one CPU tensor ``[n, layers, hidden]``.

        Queued on the worker now, synchronously: a caller that picked idle
        sessions and read their counters in the same turn of the loop gets
        states that match those counters, since any later batch of theirs
        queues behind this read.
        """
        # gather reads slab.tensor when it runs, in worker order (growth replaces it).
        return self.worker.submit(self.slab.gather, slots)

    async def restore_sessions(
        self,
        records: list[SessionRecord],
        states: torch.Tensor,
        replies: list[StepOutcome | None],
    ) -> tuple[list[Session], list[tuple[str, str]]]:
        """Recreate sessions from a store: ids, TTLs, times, counters, replay records,
        and their states (``states[i]`` is record i's ``[layers, hidden]``) in one
        worker call. Returns the sessions made and ``(session_id, why)`` for those
        that could not be (their id taken, no room); ``records`` oldest use first,
        so the table's LRU order is theirs."""
        made: list[Session] = []
        rows: list[int] = []
        refused: list[tuple[str, str]] = []
        now_wall, now = time.time(), time.monotonic()
        for i, record in enumerate(records):
            tiering = self.tiering
            if tiering is not None and not self.slab.has_free() and not self.slab.needs_growth():
                # No room left (growth ran out of memory): a spill now would write a
                # session restored above before its state is scattered. Keep it in the store.
                try:
                    tiering.add_record(record)
                except SeqinferError as exc:
                    refused.append((record.session_id, str(exc)))
                continue
            try:
                session = self.create_session_now(record.session_id, record.idle_ttl, record.tenant)
                while session is None:
                    await self.ensure_free_slot()
                    session = self.create_session_now(
                        record.session_id, record.idle_ttl, record.tenant
                    )
            except SeqinferError as exc:
                refused.append((record.session_id, str(exc)))
                continue
            session.created_at = record.created_at
            # Idle time goes on across the downtime: a TTL is about the client's silence.
            self.table.touch(session, now - max(0.0, now_wall - record.last_used))
            replay = record.replay
            self.scheduler.restore(
                session,
                record.step,
                "" if replay is None else replay.request_id,
                -1 if replay is None else replay.step_before,
                replies[i],
            )
            made.append(session)
            rows.append(i)
        if made:
            chosen = states[rows] if len(rows) != len(records) else states
            await self.scatter([s.slot for s in made], chosen)
        return made, refused

    async def scatter(self, slots: list[int], states: torch.Tensor) -> None:
        """Write ``states[i]`` into slot ``slots[i]``, in worker order."""
        await self._on_worker(self._scatter, slots, states)

    def _scatter(self, slots: list[int], states: torch.Tensor) -> None:
        tensor = self.slab.tensor
        index = torch.tensor(slots, dtype=torch.long, device=tensor.device)
        tensor.index_copy_(1, index, states.transpose(0, 1).to(tensor.device, tensor.dtype))

    # --------------------------------------------------------------- stats --

    def stats(self) -> RuntimeStats:
        memory = None
        if self.device.type == "cuda":
            memory = int(torch.cuda.memory_allocated(self.device))
        return RuntimeStats(
            model=self.key,
            device=str(self.device),
            sessions_by_tier={
                "device": self.table.device_count,
                "store": len(self.table) - self.table.device_count,
            },
            slab_capacity=self.slab.capacity,
            slab_used=self.table.device_count,
            slab_bytes=self.slab.nbytes,
            queue_depth=self.scheduler.queue_depth,
            device_memory_bytes=memory,
            weights_bytes=self.engine.weights_bytes,
            graph_bytes=self.engine.graph_bytes,
        )
