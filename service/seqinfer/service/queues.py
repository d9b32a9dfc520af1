"""One model's queued steps: a FIFO per session, the ready list, and their bounds.

Each session keeps its own FIFO of ``StepItem``s (``Session.pending``), and
``ready`` lists, in arrival order, the sessions that have work and no step
in the engine; the scheduler takes batches from it. Queued work is bounded
per model and per session, in requests and in input bytes (``push`` raises
QUEUE_FULL): the inputs are views of the request messages, so queued bytes
are what a flooding client costs in memory, and the per-session bounds keep
one session from filling its model's queue. A request always fits an empty
queue: else one larger than a bytes bound could never be served.

Owned by the scheduler, which alone calls these (on the event loop).
"""

from __future__ import annotations

from collections import deque
from typing import NoReturn

from seqinfer.service.errors import QueueFull, SeqinferError
from seqinfer.service.observer import Observer
from seqinfer.service.sessions import Session
from seqinfer.service.work import StepItem


class StepQueues:
    def __init__(
        self,
        model_key: str,
        observer: Observer,
        *,
        max_queue_size: int,
        max_queue_bytes: int,
        max_session_queue_size: int,
        max_session_queue_bytes: int,
    ) -> None:
        self.model_key = model_key
        self.observer = observer
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.max_session_queue_size = max_session_queue_size
        self.max_session_queue_bytes = max_session_queue_bytes
        self.ready: deque[Session] = deque()
        self.depth = 0  # items queued, all sessions
        self.nbytes = 0  # their input bytes

    def push(self, item: StepItem) -> None:
        """Queue an item behind its session's earlier ones, or refuse it (QUEUE_FULL)."""
        session = item.session
        pending = session.pending
        if pending is None:
            pending = session.pending = deque()
        size = item.nbytes
        if self.depth >= self.max_queue_size:
            self._refuse("max_queue_size", self.max_queue_size, "requests queued for the model")
        if self.nbytes and self.nbytes + size > self.max_queue_bytes:
            self._refuse(
                "max_queue_bytes", self.max_queue_bytes, "input bytes queued for the model"
            )
        if len(pending) >= self.max_session_queue_size:
            self._refuse(
                "max_session_queue_size",
                self.max_session_queue_size,
                "requests queued for the session",
            )
        if session.pending_bytes and session.pending_bytes + size > self.max_session_queue_bytes:
            self._refuse(
                "max_session_queue_bytes",
                self.max_session_queue_bytes,
                "input bytes queued for the session",
            )
        pending.append(item)
        session.pending_bytes += size
        self.depth += 1
        self.nbytes += size
        if not session.busy and len(pending) == 1:
            self.ready.append(session)

    def _refuse(self, bound: str, limit: int, what: str) -> NoReturn:
        self.observer.request_rejected(self.model_key, "backpressure")
        raise QueueFull(
            f"queue is full: {what} reached {bound} = {limit}; nothing was applied, retry later",
            bound=bound,
            limit=limit,
        )

    def pop(self, session: Session) -> StepItem:
        """The session's oldest item, out of the queue and its bounds."""
        assert session.pending
        item = session.pending.popleft()
        self.depth -= 1
        self.nbytes -= item.nbytes
        session.pending_bytes -= item.nbytes
        return item

    def fail_all(self, session: Session, error: SeqinferError) -> None:
        """Refuse every queued item of a session that is going away."""
        while session.pending:
            self.pop(session).refuse(error)
