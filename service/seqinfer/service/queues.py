"""One model's queued steps: a FIFO per session, the ready list, and their bounds.

Each session keeps its own FIFO of ``StepItem``s (``Session.pending``), and
``ready`` (a ``ReadyRing``) holds the sessions that have work and no step
in the engine; the scheduler takes batches from it. The ring hands sessions
out round-robin by tenant, in arrival order within a tenant: a tenant with
a thousand ready sessions gets one place in each turn like a tenant with
one, so it cannot sit ahead of everyone else (with one tenant, it is plain
FIFO). A session is in the ring at most once, so its items still apply in
arrival order.

Queued work is bounded
per model and per session, in requests and in input bytes (``push`` raises
QUEUE_FULL): the inputs are views of the request messages, so queued bytes
are what a flooding client costs in memory, and the per-session bounds keep
one session from filling its model's queue. A request always fits an empty
queue: else one larger than a bytes bound could never be served.

Counts bound memory, not waiting: 512 queued steps are 50 ms on one machine
and seconds on another, and a step that waits out its deadline in the queue
costs the server its admission and the client its time for nothing. So the
queue also measures how fast it drains while backlogged (``batch_taken``)
and, with ``max_queue_wait`` set, refuses a step whose expected wait is
longer: the tenant's queued steps times the number of tenants queued (its
round-robin share), over the drain rate. The refusal is immediate, where a
queued step would have waited and then missed its deadline.

Per tenant, ``tenant_depth``/``tenant_bytes`` count what each tenant has
queued here; admission reads them against the tenant's queue quotas.

Owned by the scheduler, which alone calls these (on the event loop).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from typing import NoReturn

from seqinfer.service.errors import QueueFull, SeqinferError
from seqinfer.service.observer import Observer
from seqinfer.service.sessions import Session
from seqinfer.service.work import StepItem


class ReadyRing:
    """The ready sessions, handed out round-robin by tenant (FIFO within one).

    The deque's interface the scheduler uses (``append``, ``popleft``,
    ``len``, truth), so batching code does not know it is fair.
    """

    __slots__ = ("_by_tenant", "_count", "_turn")

    def __init__(self) -> None:
        self._by_tenant: dict[str, deque[Session]] = {}
        self._turn: deque[str] = deque()  # tenants with ready sessions, next first
        self._count = 0

    def append(self, session: Session) -> None:
        tenant = session.tenant
        sessions = self._by_tenant.get(tenant)
        if sessions is None:
            sessions = self._by_tenant[tenant] = deque()
            self._turn.append(tenant)
        sessions.append(session)
        self._count += 1

    def popleft(self) -> Session:
        """The next tenant's oldest ready session; that tenant goes to the back."""
        tenant = self._turn[0]  # IndexError when empty, as a deque's
        sessions = self._by_tenant[tenant]
        session = sessions.popleft()
        if sessions:
            self._turn.rotate(-1)
        else:
            del self._by_tenant[tenant]
            self._turn.popleft()
        self._count -= 1
        return session

    def take(self, limit: int) -> list[Session]:
        """Up to ``limit`` sessions in ``popleft`` order, in one call (a batch's worth)."""
        if len(self._turn) == 1:  # one tenant: FIFO, no turns to keep
            tenant = self._turn[0]
            sessions = self._by_tenant[tenant]
            if len(sessions) <= limit:
                taken = list(sessions)
                del self._by_tenant[tenant]
                self._turn.clear()
            else:
                popleft = sessions.popleft
                taken = [popleft() for _ in range(limit)]
            self._count -= len(taken)
            return taken
        taken = []
        while self._count and len(taken) < limit:
            taken.append(self.popleft())
        return taken

    def tenants(self) -> int:
        return len(self._turn)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Session]:
        for tenant in self._turn:
            yield from self._by_tenant[tenant]


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
        max_queue_wait: float = 0.0,
    ) -> None:
        self.model_key = model_key
        self.observer = observer
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.max_session_queue_size = max_session_queue_size
        self.max_session_queue_bytes = max_session_queue_bytes
        self.max_queue_wait = max_queue_wait
        self.ready = ReadyRing()
        self.depth = 0  # items queued, all sessions
        self.nbytes = 0  # their input bytes
        self.tenant_depth: Counter[str] = Counter()
        self.tenant_bytes: Counter[str] = Counter()
        # Items taken per second while backlogged (0: not measured yet).
        self.drain_rate = 0.0
        self._popped = 0  # items popped, ever
        self._backlog: tuple[float, int] | None = None  # (time, popped) at the last take

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
        tenant = session.tenant
        if self.max_queue_wait > 0 and self.drain_rate > 0:
            wait = self.expected_wait(tenant)
            if wait > self.max_queue_wait:
                self.observer.request_rejected(self.model_key, "backpressure")
                raise QueueFull(
                    f"queue is full: a step queued now would wait about {wait:.3f} s, over "
                    f"max_queue_wait = {self.max_queue_wait:g} s; nothing was applied, retry "
                    "later",
                    bound="max_queue_wait",
                    limit=f"{self.max_queue_wait:g}",
                    retry_after_seconds=f"{wait - self.max_queue_wait:.3f}",
                )
        pending.append(item)
        session.pending_bytes += size
        self.depth += 1
        self.nbytes += size
        self.tenant_depth[tenant] += 1
        self.tenant_bytes[tenant] += size
        if not session.busy and len(pending) == 1:
            self.ready.append(session)

    def _refuse(self, bound: str, limit: int, what: str) -> NoReturn:
        self.observer.request_rejected(self.model_key, "backpressure")
        raise QueueFull(
            f"queue is full: {what} reached {bound} = {limit}; nothing was applied, retry later",
            bound=bound,
            limit=limit,
        )

    def expected_wait(self, tenant: str) -> float:
        """Seconds a step of ``tenant`` queued now would wait, at the measured drain rate:
        the ring serves each queued tenant in turn, so the tenant's queue drains at its
        share of the rate (an estimate; 0 before anything was measured)."""
        if self.drain_rate <= 0:
            return 0.0
        share = len(self.tenant_depth) + (tenant not in self.tenant_depth)
        return (self.tenant_depth[tenant] + 1) * share / self.drain_rate

    def batch_taken(self, now: float) -> None:
        """The scheduler took a batch at ``now`` (after its pops).

        While work is left queued after a take the loop is busy, so the items
        taken between two such takes over the time between them is how fast
        this model drains; an idle gap (nothing left queued) is not measured.
        """
        if self._backlog is not None:
            since, popped = self._backlog
            if now > since:
                sample = (self._popped - popped) / (now - since)
                rate = self.drain_rate
                self.drain_rate = sample if rate == 0 else 0.8 * rate + 0.2 * sample
        self._backlog = (now, self._popped) if self.depth else None

    def pop(self, session: Session) -> StepItem:
        """The session's oldest item, out of the queue and its bounds."""
        assert session.pending
        item = session.pending.popleft()
        self.depth -= 1
        self.nbytes -= item.nbytes
        session.pending_bytes -= item.nbytes
        tenant = session.tenant
        self.tenant_bytes[tenant] -= item.nbytes
        left = self.tenant_depth[tenant] - 1
        if left:
            self.tenant_depth[tenant] = left
        else:  # no key for an idle tenant: expected_wait counts the queued ones
            del self.tenant_depth[tenant]
            del self.tenant_bytes[tenant]
        self._popped += 1
        return item

    def hold(self, session: Session) -> None:
        """The session is being spilled or restored (``tiering``): it counts as busy, so
        its steps queue and none is batched until ``Scheduler.release``."""
        session.busy = True

    def fail_all(self, session: Session, error: SeqinferError) -> None:
        """Refuse every queued item of a session that is going away."""
        while session.pending:
            self.pop(session).refuse(error)
