"""Fairness across tenants and refusal by expected wait, on the queues and scheduler alone.

No timing: the drain rate is fed explicit clock values (``batch_taken``),
and the scheduler test holds the engine thread on an event while the flood
is queued, so what goes in the next batch is decided by the ring, not by
which thread ran first.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from seqinfer.service.errors import QueueFull
from seqinfer.service.observer import Observer
from seqinfer.service.queues import ReadyRing, StepQueues
from seqinfer.service.sessions import Session
from seqinfer.service.work import StepItem
from tests.unit.test_scheduler import Harness, _until

X = np.ones((1, 8), np.float32)


def _session(tenant: str, sid: str) -> Session:
    return Session(sid, slot=0, idle_ttl=0.0, tenant=tenant)


def test_the_ring_takes_tenants_in_turn_and_each_tenants_sessions_in_arrival_order():
    ring = ReadyRing()
    flood = [_session("a", f"a{i}") for i in range(5)]
    for s in flood:
        ring.append(s)
    b1, b2, anon = _session("b", "b1"), _session("b", "b2"), _session("", "x")
    for s in (b1, b2, anon):
        ring.append(s)
    assert len(ring) == 8 and ring.tenants() == 3
    order = [ring.popleft().session_id for _ in range(8)]
    assert order == ["a0", "b1", "x", "a1", "b2", "a2", "a3", "a4"]
    assert not ring and ring.tenants() == 0
    with pytest.raises(IndexError):
        ring.popleft()


def test_with_one_tenant_the_ring_is_plain_fifo():
    ring = ReadyRing()
    sessions = [_session("", f"s{i}") for i in range(4)]
    for s in sessions[:2]:
        ring.append(s)
    first = ring.popleft()
    for s in sessions[2:]:
        ring.append(s)
    ring.append(first)  # back to the ready list after its step
    assert [ring.popleft().session_id for _ in range(4)] == ["s1", "s2", "s3", "s0"]


def _queues(wait: float) -> StepQueues:
    return StepQueues(
        "m:1",
        Observer(),
        max_queue_size=1000,
        max_queue_bytes=1 << 30,
        max_session_queue_size=1000,
        max_session_queue_bytes=1 << 30,
        max_queue_wait=wait,
    )


def _item(session: Session) -> StepItem:
    return StepItem(session, X, None)


def _drain(queues: StepQueues, per_take: int, times: list[float]) -> None:
    """Take ``per_take`` items at each of ``times``, as the scheduler would while backlogged."""
    for now in times:
        for _ in range(per_take):
            s = queues.ready.popleft()
            queues.pop(s)
            if s.pending:
                queues.ready.append(s)
        queues.batch_taken(now)


def test_the_drain_rate_is_measured_only_while_backlogged():
    q = _queues(0.0)
    a = _session("a", "a")
    for _ in range(30):
        q.push(_item(a))
    _drain(q, 10, [0.0, 0.125])  # 10 items taken in 0.125 s with work left: 80/s
    assert q.drain_rate == pytest.approx(80.0)
    _drain(q, 10, [0.25])  # measured (a backlog since 0.125); the queue empties here
    assert q.depth == 0 and q.drain_rate == pytest.approx(80.0)
    q.push(_item(a))
    _drain(q, 1, [5.0])  # idle for seconds since: not a sample
    q.push(_item(a))
    _drain(q, 1, [5.5])  # nothing was left queued at 5.0: not a sample either
    assert q.drain_rate == pytest.approx(80.0)


def test_a_step_that_would_wait_past_max_queue_wait_is_refused_at_once():
    q = _queues(0.555)
    a, b = _session("a", "a"), _session("b", "b")
    for _ in range(100):
        q.push(_item(a))  # nothing measured yet: only the count bounds apply
    _drain(q, 25, [0.0, 0.25])  # 100 steps/s; 50 of a left
    assert q.depth == 50 and q.expected_wait("a") == pytest.approx(0.51)
    for _ in range(5):
        q.push(_item(a))  # up to 55 queued: 0.55 s
    with pytest.raises(QueueFull) as full:
        q.push(_item(a))
    assert full.value.metadata["bound"] == "max_queue_wait"
    assert float(full.value.metadata["retry_after_seconds"]) > 0
    assert q.depth == 55 and q.tenant_depth["a"] == 55  # the refused one was not queued
    # Tenant b's step is served in the next turn of the ring, not behind a's 55:
    # its expected wait is its own share, so it is accepted.
    assert q.expected_wait("b") == pytest.approx(0.02)
    q.push(_item(b))
    assert q.tenant_depth == {"a": 55, "b": 1}


async def test_a_second_tenants_step_goes_in_the_next_batch_despite_a_flood_queued_first():
    h = Harness(max_batch_size=4, inline_max_timesteps=0)
    held = threading.Event()
    h.executor.submit(held.wait, 60)  # the engine thread is busy until released
    h.scheduler.start()
    try:
        flood = [h.table.create(f"a{i}", None, "a")[0] for i in range(20)]
        (b,) = h.table.create("b", None, "b")[:1]
        first = h.item(flood[0], X)
        h.scheduler.submit(first)
        await _until(lambda: h.scheduler.in_flight == 1, "the first batch to be in the engine")
        items = [h.item(s, X) for s in flood[1:]] + [h.item(flood[0], X)]
        for it in items:
            h.scheduler.submit(it)
        mine = h.item(b, X)
        h.scheduler.submit(mine)  # queued after all 20 of the flood
        done: list[str] = []
        for it in [first, *items, mine]:
            it.future.add_done_callback(lambda f, it=it: done.append(it.session.session_id))
        held.set()
        await asyncio.gather(*(it.future for it in [first, *items, mine]))
    finally:
        held.set()
        await h.scheduler.drain()
        h.executor.shutdown()
    # Batch 1 was a0 alone; batch 2 (4 sessions) takes b in its second place.
    assert h.observer.batches[:2] == [1, 4]
    assert done.index("b") < 5, done
    # Per-session order held: a0's second step came after its first.
    assert flood[0].step == 2 and b.step == 1
