"""One model's session table: ids, idle TTL, LRU order and tombstones.

The table is ordered by last use (an OrderedDict moved-to-end on every
step), which makes both LRU eviction and the idle-TTL sweep cost O(sessions
removed), not O(sessions open). It runs on the event loop only and needs no
lock. A session's hidden state is not here but in its slot of the model's
``slab.StateSlab``; the table takes slots from the slab and gives them back
through ``release_slot``, which zeroes the slot in the worker's order first.

Sessions are keyed by (tenant, id) (``tenants.session_key``): a session of
another tenant is not in a caller's view of the table at all.

Who writes what: the table creates and removes sessions; the scheduler alone
writes a session's step counter, its replay record and its queue (see
``scheduler``).

Two tiers (``tiering``, with durability): a session is on the device (it
owns a slot) or in the store (``slot`` is ``IN_STORE``: only this small
bookkeeping stays in memory, its state and replay record are in the state
store). Both tiers are in ``by_id``, so lookups, TTLs and ``max_sessions``
count them alike; ``on_device`` keeps the device tier's own LRU order, which
is where the sessions to spill are found without walking the store tier.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from seqinfer.service.errors import (
    CapacityFull,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from seqinfer.service.slab import StateSlab
from seqinfer.service.tenants import session_key

if TYPE_CHECKING:
    from seqinfer.service.protocol import StepOutcome
    from seqinfer.service.work import StepItem

# Remembering why a session vanished lets a late client get SESSION_EXPIRED or
# SESSION_EVICTED instead of a bare "not found"; bounded so churn can't grow it.
TOMBSTONE_LIMIT = 100_000
# The slot of a session whose state is in the store, not the slab.
IN_STORE = -1


@dataclass(slots=True, eq=False)
class Session:
    """One session's bookkeeping. Its hidden state is column ``slot`` of the slab
    (or in the store, when ``slot`` is ``IN_STORE``)."""

    session_id: str
    slot: int
    idle_ttl: float  # seconds; 0 = never expires
    tenant: str = ""
    key: str = ""  # in the table: session_key(tenant, session_id)
    created_at: float = field(default_factory=time.time)  # wall clock, for reporting
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    # ---- written by the scheduler only ----
    step: int = 0  # timesteps applied
    busy: bool = False  # a request of this session is in the engine
    # Items waiting; created on first use because an empty deque costs ~600
    # bytes and most idle sessions never queue twice.
    pending: deque[StepItem] | None = None
    pending_bytes: int = 0  # input bytes of ``pending``, for the per-session bound
    # Set by CloseSession while the session still has work: no new request is
    # accepted, and the close happens once everything accepted before it has
    # been applied and answered; the future gets the final step.
    close_waiter: asyncio.Future[int] | None = None
    # The last applied request, for expected_step retries (only if it had a request id).
    last_request_id: str = ""
    last_step_before: int = -1
    last_reply: StepOutcome | None = None

    def last_used_wall(self) -> float:
        return time.time() - (time.monotonic() - self.last_used)


class SessionTable:
    def __init__(
        self,
        slab: StateSlab,
        release_slot: Callable[[int], None],
        *,
        max_sessions: int,
        eviction: Literal["reject", "lru"],
        default_ttl: float,
    ) -> None:
        """``release_slot(slot)`` zeroes a removed session's slot in worker order, then frees it."""
        self._slab = slab
        self._release_slot = release_slot
        self.max_sessions = max_sessions
        self.eviction = eviction
        self.default_ttl = default_ttl
        # By session_key(tenant, id): for the anonymous tenant, by id.
        self.by_id: OrderedDict[str, Session] = OrderedDict()
        self.open_by_tenant: Counter[str] = Counter()
        self._tombstones: OrderedDict[str, type[SessionNotFound]] = OrderedDict()
        # Smallest positive TTL ever given; the sweep stops at the first session
        # idle for less than this, since the table is ordered by last use.
        self._min_ttl = default_ttl if default_ttl > 0 else float("inf")
        # With tiers: the sessions holding a slot, least recently used first.
        self.on_device: OrderedDict[str, Session] | None = None
        # Set when a device session may have become idle (a step of it completed)
        # or freed its slot: ``tiering`` waits on it for something to spill.
        self.settled: asyncio.Event | None = None

    def enable_tiers(self) -> None:
        """From now on ``max_sessions`` counts both tiers, and a full slab is the
        caller's to make room in (by spilling), not a reason to refuse."""
        self.on_device = OrderedDict((k, s) for k, s in self.by_id.items() if s.slot >= 0)

    @property
    def device_count(self) -> int:
        return len(self.by_id) if self.on_device is None else len(self.on_device)

    # ------------------------------------------------------------- lookup --

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, key: str) -> bool:
        return key in self.by_id

    def get(self, session_id: str, tenant: str = "") -> Session:
        session = self.by_id.get(session_key(tenant, session_id))
        if session is None:
            raise self.missing(session_id, tenant)
        return session

    def missing(self, session_id: str, tenant: str = "") -> SessionNotFound:
        kind = self._tombstones.get(session_key(tenant, session_id), SessionNotFound)
        what = {
            SessionExpired: "expired (idle TTL passed)",
            SessionEvicted: "was evicted to make room",
        }.get(kind, "not found")
        return kind(f"session {session_id!r} {what}", session_id=session_id)

    def touch(self, session: Session, now: float | None = None) -> None:
        session.last_used = time.monotonic() if now is None else now
        self.by_id.move_to_end(session.key)
        if self.on_device is not None and session.slot >= 0:
            self.on_device.move_to_end(session.key)
            if self.settled is not None:
                self.settled.set()

    # ----------------------------------------------------------- lifecycle --

    def create(
        self, session_id: str | None, idle_ttl: float | None, tenant: str = ""
    ) -> tuple[Session, list[Session]]:
        """Register a session on a free slot, whose state is zeros (torch.nn.GRU's h0).

        Returns the session and the sessions evicted to make room for it.
        Callers grow the slab first when ``slab.needs_growth()``.
        """
        sid = session_id or uuid.uuid4().hex
        key = session_key(tenant, sid)
        if key in self.by_id:
            raise SessionExists(f"session {sid!r} already exists", session_id=sid)
        evicted: list[Session] = []
        tiered = self.on_device is not None
        if (len(self.by_id) >= self.max_sessions) if tiered else not self._slab.has_free():
            victim = self._lru_victim() if self.eviction == "lru" else None
            if victim is None:
                raise CapacityFull(
                    f"model has {len(self.by_id)} sessions open, the limit is {self.max_sessions}",
                    max_sessions=self.max_sessions,
                )
            self.remove(victim, SessionEvicted)
            evicted.append(victim)
        if not self._slab.has_free():  # tiered: the caller spills first (ModelRuntime)
            raise CapacityFull(
                f"model has {self.device_count} sessions on the device and none idle to spill",
                max_sessions=self.max_sessions,
            )
        ttl = self.default_ttl if idle_ttl is None else idle_ttl
        if ttl > 0:
            self._min_ttl = min(self._min_ttl, ttl)
        session = Session(sid, self._slab.take(), ttl, tenant, key)
        self._add(session)
        return session, evicted

    def _add(self, session: Session) -> None:
        key = session.key
        self.by_id[key] = session
        if self.on_device is not None and session.slot >= 0:
            self.on_device[key] = session
        self.open_by_tenant[session.tenant] += 1
        self._tombstones.pop(key, None)

    def add_in_store(
        self, session_id: str, tenant: str, idle_ttl: float, created_at: float, last_used: float
    ) -> Session:
        """Register a session whose state is in the store (lazy restore, or an eager
        restore past ``device_sessions``); it takes no slot and is not checked
        against ``max_sessions`` (it was open when it was written)."""
        key = session_key(tenant, session_id)
        if key in self.by_id:
            raise SessionExists(f"session {session_id!r} already exists", session_id=session_id)
        if idle_ttl > 0:
            self._min_ttl = min(self._min_ttl, idle_ttl)
        session = Session(session_id, IN_STORE, idle_ttl, tenant, key, created_at, last_used)
        self._add(session)
        return session

    def to_store(self, session: Session) -> int:
        """The session's state is now in the store: it gives up its slot (returned,
        for the caller to zero and free)."""
        slot = session.slot
        session.slot = IN_STORE
        if self.on_device is not None:
            self.on_device.pop(session.key, None)
        return slot

    def to_device(self, session: Session, slot: int) -> None:
        """A session back from the store on ``slot`` (taken by the caller)."""
        session.slot = slot
        if self.on_device is not None and not session.closed:
            self.on_device[session.key] = session

    def spill_candidates(self, count: int) -> list[Session]:
        """Up to ``count`` idle sessions on the device, least recently used first."""
        found: list[Session] = []
        for session in (self.on_device or {}).values():
            if len(found) >= count:
                break
            if not session.busy and not session.pending and session.close_waiter is None:
                found.append(session)
        return found

    def _lru_victim(self) -> Session | None:
        for session in self.by_id.values():
            if not session.busy and not session.pending:
                return session
        return None

    def remove(self, session: Session, why: type[SessionNotFound] | None = None) -> None:
        """Drop a session and free its slot. ``why`` is remembered for late callers."""
        if session.closed:
            return
        session.closed = True
        del self.by_id[session.key]
        self.open_by_tenant[session.tenant] -= 1
        if self.on_device is not None:
            self.on_device.pop(session.key, None)
        if session.slot >= 0:
            self._release_slot(session.slot)
            if self.settled is not None:
                self.settled.set()
        if why is not None and why is not SessionNotFound:
            self._tombstones[session.key] = why
            while len(self._tombstones) > TOMBSTONE_LIMIT:
                self._tombstones.popitem(last=False)

    def expired(self, now: float) -> list[Session]:
        """Idle sessions past their TTL, oldest first (not removed)."""
        found = []
        for session in self.by_id.values():
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
