"""Per-model session state: the slab of hidden states, its slot allocator and the session table.

The slab is one tensor ``[layers, capacity, hidden]`` on the model's device;
a session owns one slot (a column). Capacity doubles on demand up to
``max_sessions``. Slab *contents* are touched only on the engine thread (see
``engine``); this module decides *which* slot belongs to whom and runs on the
event loop, so table and allocator need no lock either.

The table is ordered by last use (an OrderedDict moved-to-end on every step),
which makes both LRU eviction and the idle-TTL sweep cost O(sessions
removed), not O(sessions open).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from seqinfer.service.errors import (
    CapacityFull,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)

if TYPE_CHECKING:
    from seqinfer.service.engine import GRUEngine
    from seqinfer.service.worker import SerialWorker

# Remembering why a session vanished lets a late client get SESSION_EXPIRED or
# SESSION_EVICTED instead of a bare "not found"; bounded so churn can't grow it.
TOMBSTONE_LIMIT = 100_000


@dataclass(slots=True, eq=False)
class Session:
    """One session's bookkeeping. Its hidden state is column ``slot`` of the slab."""

    session_id: str
    slot: int
    idle_ttl: float  # seconds; 0 = never expires
    created_at: float = field(default_factory=time.time)  # wall clock, for reporting
    last_used: float = field(default_factory=time.monotonic)
    step: int = 0  # timesteps applied
    busy: bool = False  # a request of this session is in the engine
    closed: bool = False
    # StepItems waiting, owned by the scheduler; created on first use because an
    # empty deque costs ~600 bytes and most idle sessions never queue twice.
    pending: deque[Any] | None = None
    pending_bytes: int = 0  # input bytes of ``pending``, for the per-session bound
    # Set by CloseSession while the session still has work (an asyncio.Future
    # of the final step): no new request is accepted, and the close happens
    # once everything accepted before it has been applied and answered.
    close_waiter: Any = None
    # The last applied request, for expected_step retries (only if it had a request id).
    last_request_id: str = ""
    last_step_before: int = -1
    last_reply: Any = None

    def last_used_wall(self) -> float:
        return time.time() - (time.monotonic() - self.last_used)


class SessionStore:
    """Session table + slot allocator for one model's slab.

    Invariant: every free slot holds zeros (new slab columns are zeros; a
    freed slot is zeroed on the engine thread before it can be reused).
    """

    def __init__(
        self,
        engine: GRUEngine,
        worker: SerialWorker,
        *,
        initial_capacity: int,
        max_sessions: int,
        eviction: Literal["reject", "lru"],
        default_ttl: float,
    ) -> None:
        self.engine = engine
        self._worker = worker
        self.max_sessions = max_sessions
        self.eviction = eviction
        self.default_ttl = default_ttl
        self.capacity = min(initial_capacity, max_sessions)
        self.slab = engine.new_slab(self.capacity)
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._tombstones: OrderedDict[str, type[SessionNotFound]] = OrderedDict()
        # Smallest positive TTL ever given; the sweep stops at the first session
        # idle for less than this, since the table is ordered by last use.
        self._min_ttl = default_ttl if default_ttl > 0 else float("inf")

    # ------------------------------------------------------------- lookup --

    def __len__(self) -> int:
        return len(self.sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self.sessions

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise self.missing(session_id)
        return session

    def missing(self, session_id: str) -> SessionNotFound:
        kind = self._tombstones.get(session_id, SessionNotFound)
        what = {
            SessionExpired: "expired (idle TTL passed)",
            SessionEvicted: "was evicted to make room",
        }.get(kind, "not found")
        return kind(f"session {session_id!r} {what}", session_id=session_id)

    def touch(self, session: Session, now: float | None = None) -> None:
        session.last_used = time.monotonic() if now is None else now
        self.sessions.move_to_end(session.session_id)

    # ----------------------------------------------------------- lifecycle --

    def needs_growth(self) -> bool:
        return not self._free and self.capacity < self.max_sessions

    def grow(self) -> None:
        """Double the slab (engine thread only: it replaces the tensor batches read)."""
        new_capacity = min(self.capacity * 2, self.max_sessions)
        slab = self.engine.new_slab(new_capacity)
        slab[:, : self.capacity] = self.slab
        self._free.extend(range(new_capacity - 1, self.capacity - 1, -1))
        self.slab = slab
        self.capacity = new_capacity

    def create(
        self, session_id: str | None, idle_ttl: float | None
    ) -> tuple[Session, list[Session]]:
        """Register a session on a free slot, whose state is zeros (torch.nn.GRU's h0).

        Returns the session and the sessions evicted to make room for it.
        Callers grow the slab first when ``needs_growth()``.
        """
        sid = session_id or uuid.uuid4().hex
        if sid in self.sessions:
            raise SessionExists(f"session {sid!r} already exists", session_id=sid)
        evicted: list[Session] = []
        if not self._free:
            victim = self._lru_victim() if self.eviction == "lru" else None
            if victim is None:
                raise CapacityFull(
                    f"model has {len(self.sessions)} sessions open, the limit is "
                    f"{self.max_sessions}",
                    max_sessions=self.max_sessions,
                )
            self.remove(victim, SessionEvicted)
            evicted.append(victim)
        ttl = self.default_ttl if idle_ttl is None else idle_ttl
        if ttl > 0:
            self._min_ttl = min(self._min_ttl, ttl)
        session = Session(sid, self._free.pop(), ttl)
        self.sessions[sid] = session
        self._tombstones.pop(sid, None)
        return session, evicted

    def _lru_victim(self) -> Session | None:
        for session in self.sessions.values():
            if not session.busy and not session.pending:
                return session
        return None

    def remove(self, session: Session, why: type[SessionNotFound] | None = None) -> None:
        """Drop a session and free its slot. ``why`` is remembered for late callers."""
        if session.closed:
            return
        session.closed = True
        del self.sessions[session.session_id]
        # Free slots hold zeros, so a new session needs no engine round trip.
        # The zeroing queues on the engine thread behind any batch still using
        # the slot and ahead of anything its next owner does.
        self._worker.submit(self.write_state, session.slot, None)
        self._free.append(session.slot)
        if why is not None and why is not SessionNotFound:
            self._tombstones[session.session_id] = why
            while len(self._tombstones) > TOMBSTONE_LIMIT:
                self._tombstones.popitem(last=False)

    def expired(self, now: float) -> list[Session]:
        """Idle sessions past their TTL, oldest first (not removed)."""
        found = []
        for session in self.sessions.values():
            idle = now - session.last_used
            if idle < self._min_ttl:
                break
            if (
                session.idle_ttl > 0
                and idle >= session.idle_ttl
                and not session.busy
                and not session.pending
            ):
                found.append(session)
        return found

    # ------------------------------------------------------ slab contents --
    # Engine thread only.

    def write_state(self, slot: int, state: torch.Tensor | None) -> None:
        if state is None:
            self.slab[:, slot] = 0
        else:
            self.slab[:, slot] = state.to(self.slab.device, self.slab.dtype)

    def read_state(self, slot: int) -> torch.Tensor:
        return self.slab[:, slot].to("cpu", copy=True)

    def copy_state(self, source_slot: int, target_slot: int) -> None:
        self.slab[:, target_slot] = self.slab[:, source_slot]

    @property
    def slab_bytes(self) -> int:
        return self.slab.numel() * self.slab.element_size()
