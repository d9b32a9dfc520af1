"""Slot allocator, growth, capacity (slab), LRU eviction and TTL expiry (session table)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from seqinfer.service.engine import GRUEngine
from seqinfer.service.errors import CapacityFull, SessionEvicted, SessionExists, SessionExpired
from seqinfer.service.sessions import SessionTable
from seqinfer.service.slab import StateSlab
from tests.support import make_model


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _store(executor, *, initial_capacity=2, max_sessions=5, **kw) -> tuple[StateSlab, SessionTable]:
    """A slab and its table, wired as ModelRuntime wires them (zeroing on the executor)."""
    engine = GRUEngine(make_model("dense"), torch.device("cpu"))
    slab = StateSlab(engine, initial_capacity=initial_capacity, max_capacity=max_sessions)

    def release(slot: int) -> None:
        executor.submit(slab.write, slot, None)
        slab.release(slot)

    options = {"eviction": "reject", "default_ttl": 0.0}
    options.update(kw)
    return slab, SessionTable(slab, release, max_sessions=max_sessions, **options)


def test_slots_are_distinct_and_capacity_doubles_to_the_limit(executor):
    slab, store = _store(executor)
    slots = []
    for i in range(5):
        if slab.needs_growth():
            slab.grow()
        slots.append(store.create(f"s{i}", None)[0].slot)
    assert sorted(slots) == [0, 1, 2, 3, 4]
    assert slab.capacity == 5 and slab.tensor.shape == (2, 5, 16)
    assert not slab.needs_growth()
    with pytest.raises(CapacityFull):
        store.create("s5", None)
    with pytest.raises(SessionExists):
        store.create("s0", None)


def test_growth_keeps_existing_states(executor):
    slab, store = _store(executor, max_sessions=8)
    a, _ = store.create("a", None)
    slab.write(a.slot, torch.full((2, 16), 3.0))
    store.create("b", None)
    slab.grow()
    assert torch.equal(slab.read(a.slot), torch.full((2, 16), 3.0))


def test_freed_slot_is_zeroed_before_reuse(executor):
    slab, store = _store(executor)
    a, _ = store.create("a", None)
    slab.write(a.slot, torch.ones(2, 16))
    store.remove(a)
    b, _ = store.create("b", None)
    assert b.slot == a.slot
    executor.submit(lambda: None).result()  # the zeroing ran on the engine thread
    assert torch.count_nonzero(slab.read(b.slot)) == 0


def test_lru_eviction_picks_least_recently_used_idle_session(executor):
    _, store = _store(executor, initial_capacity=3, max_sessions=3, eviction="lru")
    a = store.create("a", None)[0]
    b = store.create("b", None)[0]
    store.create("c", None)
    store.touch(a)  # now b is the least recently used
    evicted = store.create("d", None)[1]
    assert [s.session_id for s in evicted] == ["b"]
    assert isinstance(store.missing("b"), SessionEvicted)
    assert b.closed and "a" in store


def test_expired_sessions_are_found_oldest_first_and_remembered(executor):
    _, store = _store(executor, default_ttl=0.05, initial_capacity=4)
    old = store.create("old", None)[0]
    forever = store.create("forever", 0.0)[0]
    fresh = store.create("fresh", None)[0]
    # The clock is an argument: "fresh" was last used 0.06 s after "old", and
    # the sweep looks 0.01 s later still (no waiting for time to pass).
    now = old.last_used + 0.06
    store.touch(fresh, now)
    found = store.expired(now + 0.01)
    assert found == [old]
    assert forever not in found and fresh not in found
    store.remove(old, SessionExpired)
    assert isinstance(store.missing("old"), SessionExpired)
