"""Continuous batching for one model.

A plain class with explicit queues (``queues``, which also bound them and
raise QUEUE_FULL): each session keeps its own FIFO of ``StepItem``s, and
``_ready`` holds the sessions that have work and nothing in the engine,
handed out round-robin by tenant. One iteration takes the head item of up to
``max_batch_size`` ready sessions (never two of one session in a batch, so a
session's items apply in arrival order), checks deadlines, cancellation and
``expected_step`` against the session's *current* counter (exact: it has
nothing in flight), computes the batch (``_execute``, the one path every
batch takes), commits it with durability ``write-through`` (``committer``),
then answers every item. While a batch computes on the worker, the event
loop keeps reading requests into the queues for the next batch.

The scheduler is the only writer of a session's step counter, replay record
(the last request id, the counter before it, the cached reply) and queue:
steps write them in ``_complete``, fork and import through ``set_counter``,
a restore from a state store through ``restore``. So nothing moves the
counter between the check in ``checks.first_runnable`` and the completion.

A session being closed (``close_after_work``) accepts nothing new and is
closed by the loop once its accepted work has been answered, so the final
step CloseSession reports includes every request received before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from seqinfer.service.checks import first_runnable
from seqinfer.service.engine import EngineItem, EngineResult, GRUEngine
from seqinfer.service.errors import (
    SeqinferError,
    SessionNotFound,
    StoreUnavailable,
    draining,
    internal,
)
from seqinfer.service.observer import Observer
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.queues import StepQueues
from seqinfer.service.sessions import Session, SessionTable
from seqinfer.service.slab import StateSlab
from seqinfer.service.work import StepItem, engine_items, step_outcomes
from seqinfer.service.worker import SerialWorker

if TYPE_CHECKING:
    from seqinfer.service.commits import WriteThrough

log = logging.getLogger(__name__)


class Scheduler:
    """Batches one model's step requests and computes them in its worker's order."""

    def __init__(
        self,
        model_key: str,
        engine: GRUEngine,
        slab: StateSlab,
        table: SessionTable,
        worker: SerialWorker,
        *,
        max_batch_size: int,
        max_batch_delay: float,
        max_queue_size: int,
        max_queue_bytes: int,
        max_session_queue_size: int,
        max_session_queue_bytes: int,
        max_queue_wait: float = 0.0,
        inline_max_timesteps: int,
        observer: Observer,
        on_session_closed: Callable[[Session, str], None],
    ) -> None:
        self.model_key = model_key
        self.engine = engine
        self.slab = slab
        self.table = table
        self.worker = worker
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.queues = StepQueues(
            model_key,
            observer,
            max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes,
            max_session_queue_size=max_session_queue_size,
            max_session_queue_bytes=max_session_queue_bytes,
            max_queue_wait=max_queue_wait,
        )
        self._ready = self.queues.ready
        self.inline_max_timesteps = inline_max_timesteps
        self.observer = observer
        self._on_session_closed = on_session_closed
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        # Durability write-through: a batch's replies wait for its commit.
        self.committer: WriteThrough | None = None

    # -------------------------------------------------------------- intake --

    @property
    def queue_depth(self) -> int:
        return self.queues.depth

    def submit(self, item: StepItem) -> None:
        """Queue an item behind its session's earlier ones (event loop thread)."""
        if self.draining:
            raise draining()
        session = item.session
        if session.close_waiter is not None:
            raise SessionNotFound(
                f"session {session.session_id!r} is being closed", session_id=session.session_id
            )
        ready = len(self.queues.ready)
        self.queues.push(item)
        self._idle.clear()
        if len(self.queues.ready) != ready:
            self._wakeup.set()

    def fail_pending(self, session: Session, error: SeqinferError) -> None:
        """Fail every queued item of a session that is going away."""
        self.queues.fail_all(session, error)
        self._check_idle()

    def set_counter(self, session: Session, step: int) -> None:
        """A counter set from outside a step (fork, import): the replay record no
        longer matches the state, so it is forgotten."""
        self.restore(session, step, "", -1, None)

    def restore(
        self,
        session: Session,
        step: int,
        last_request_id: str,
        last_step_before: int,
        last_reply: StepOutcome | None,
    ) -> None:
        """A session brought back from a state store: its counter and replay record as
        they were written, so an ``expected_step`` retry of its last request replays."""
        session.step = step
        session.last_request_id = last_request_id
        session.last_step_before = last_step_before
        session.last_reply = last_reply

    def release(self, session: Session) -> None:
        """End a ``queues.hold``: steps queued meanwhile run (or a close waiting happens)."""
        session.busy = False
        if session.pending and not session.closed:
            self._ready.append(session)
            self._wakeup.set()
        self._close_if_idle(session)

    def close_after_work(self, session: Session) -> asyncio.Future[int]:
        """Mark a session as closing; the future gets its final step once it is closed.

        The caller closes an idle session itself; a busy one is closed by the
        loop when its last accepted request has been answered.
        """
        if session.close_waiter is None:
            session.close_waiter = asyncio.get_running_loop().create_future()
        waiter: asyncio.Future[int] = session.close_waiter
        return waiter

    def _close_if_idle(self, session: Session) -> None:
        if (
            session.close_waiter is not None
            and not session.closed
            and not session.busy
            and not session.pending
        ):
            self._on_session_closed(session, "closed")

    # ---------------------------------------------------------------- loop --

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"scheduler:{self.model_key}"
        )

    async def drain(self) -> None:
        """Refuse new work, let everything accepted finish, then stop the loop."""
        self.draining = True
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _check_idle(self) -> None:
        if self.queue_depth == 0 and self.in_flight == 0:
            self._idle.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill_window(loop)
            batch = self._take_batch()
            if not batch:
                self._check_idle()
                continue
            for part in self._parts(batch):
                await self._execute(part)
            self._check_idle()

    async def _execute(self, batch: list[StepItem]) -> None:
        """Compute a batch and answer its items: the one path every batch takes.

        Where it computes is the only choice: on the worker, or right here on
        the event loop when the batch is tiny and the worker has nothing
        queued or running (``_inline``: two thread hand-offs cost more than
        such a batch's compute). Either way the slab is touched in worker
        order, because an idle worker has nothing that could run before or
        after this batch.
        """
        self.in_flight = len(batch)
        started = time.monotonic()
        items = engine_items(batch)
        try:
            if self._inline(batch):
                results, states = self._compute(items)
            else:
                results, states = await self.worker.run(self._compute, items)
        except Exception as exc:  # a server fault, never the caller's
            log.exception("engine failed on a batch of %d", len(batch))
            self._fail_batch(batch, exc)
        else:
            done = time.monotonic()
            outcomes = step_outcomes(batch, results)
            refusal = None
            if self.committer is not None and states is not None:
                refusal = await self.committer.commit(batch, outcomes, states, done)
            self._complete(batch, outcomes, started, done, refusal)
        self.in_flight = 0

    def _parts(self, batch: list[StepItem]) -> tuple[list[StepItem], ...]:
        """Short items, then long chunks, as two engine calls when a batch mixes them:
        else one session's 4096-step chunk (~0.4 s for bench-gru on one core) would
        hold every short step batched with it; now they wait for at most one chunk."""
        threshold = self.engine.long_chunk_threshold
        short = [item for item in batch if item.timesteps < threshold]
        if not short or len(short) == len(batch):
            return (batch,)
        return short, [item for item in batch if item.timesteps >= threshold]

    def _inline(self, batch: list[StepItem]) -> bool:
        """Tiny batch, idle worker: computing here saves two thread hand-offs (0 = never)."""
        if sum(item.timesteps for item in batch) > self.inline_max_timesteps:
            return False
        return self.worker.idle()

    def _compute(self, items: list[EngineItem]) -> tuple[list[EngineResult], torch.Tensor | None]:
        # Read the slab when the batch runs, in worker order: a growth queued ahead
        # of this batch replaces the tensor, and the batch must write to the new one.
        results = self.engine.run(self.slab.tensor, items)
        if self.committer is None:
            return results, None
        # The states to commit, read in the same worker call: exactly this batch's.
        return results, self.slab.gather([item.slot for item in items])

    def _uncommitted(self, session: Session) -> bool:
        return self.committer is not None and self.committer.uncommitted(session)

    async def _fill_window(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give a small batch a chance to grow before it runs."""
        # Always yield once: requests already read off the wire enqueue first.
        await asyncio.sleep(0)
        if self.max_batch_delay <= 0:
            return
        deadline = loop.time() + self.max_batch_delay
        while len(self._ready) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[StepItem]:
        batch: list[StepItem] = []
        now = time.monotonic()
        limit = self.max_batch_size
        while len(batch) < limit:
            # Round-robin by tenant (queues.ReadyRing); a session with nothing
            # runnable left leaves room for the next ones.
            sessions = self._ready.take(limit - len(batch))
            if not sessions:
                break
            for session in sessions:
                item = first_runnable(
                    session, now, self.queues, self.observer, self.model_key, self._uncommitted
                )
                if item is not None:
                    session.busy = True
                    batch.append(item)
                elif session.close_waiter is not None:
                    self._close_if_idle(session)
        self.queues.batch_taken(now)
        return batch

    # ---------------------------------------------------------- completion --

    def _complete(
        self,
        batch: list[StepItem],
        outcomes: list[StepOutcome],
        started: float,
        done: float,
        refusal: SeqinferError | dict[str, StoreUnavailable] | None,
    ) -> None:
        """Apply each item's counter and replay record, then answer it (or, when
        its commit failed, refuse it with ``refusal``: applied, not yet kept;
        for the whole batch, or per session key when only some were refused)."""
        timesteps = 0
        key = self.model_key
        observer = self.observer
        touch = self.table.touch
        closing: list[Session] = []
        for item, outcome in zip(batch, outcomes):
            session = item.session
            session.busy = False
            counter_before = session.step
            session.step = outcome.step
            timesteps += item.timesteps
            if item.request_id:
                session.last_request_id = item.request_id
                session.last_step_before = counter_before
                # Own copy: the outputs are a view that would keep the whole
                # batch's output array alive for as long as the cache holds it.
                session.last_reply = outcome.copy(replayed=False)
            # A session closed or evicted while computing has had its step
            # applied and its slot freed: there is nothing left to update.
            if item.end and not session.closed:
                self._on_session_closed(session, "closed")
            elif not session.closed:
                touch(session, done)
                if session.pending:
                    self._ready.append(session)
                elif session.close_waiter is not None:
                    closing.append(session)
            error = refusal.get(session.key) if isinstance(refusal, dict) else refusal
            if error is None:
                item.answer(outcome)
            else:
                item.refuse(error)
            observer.request_completed(
                key, item.timesteps, done - item.enqueued_at, started - item.enqueued_at
            )
        # After the replies, so a step's reply never follows its session's close.
        for session in closing:
            self._close_if_idle(session)
        observer.batch_completed(key, len(batch), timesteps, done - started)
        if self._ready:
            self._wakeup.set()

    def _fail_batch(self, batch: list[StepItem], exc: Exception) -> None:
        # The log has the details; the caller gets the type only (errors.internal).
        error = internal(exc)
        for item in batch:
            item.session.busy = False
            if item.session.pending and not item.session.closed:
                self._ready.append(item.session)
            item.refuse(error)
            self._close_if_idle(item.session)
        if self._ready:
            self._wakeup.set()
