"""The slab's byte cap and out-of-memory at growth: CAPACITY_FULL, never a crash.

No GPU here, so the device's out-of-memory error is injected into the slab's
allocation (the engine's ``new_slab``) at growth.
"""

from __future__ import annotations

import pytest
import torch

from seqinfer.service.engine import GRUEngine
from seqinfer.service.errors import CapacityFull
from seqinfer.service.observer import Observer
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import SessionTable
from seqinfer.service.slab import StateSlab, is_out_of_memory
from tests.support import make_model
from tests.support import test_settings as settings_for

PER_SESSION = 2 * 16 * 4  # make_model("dense"): 2 layers x 16 hidden x float32


def _engine(**kw) -> GRUEngine:
    return GRUEngine(make_model("dense"), torch.device("cpu"), **kw)


def test_byte_cap_limits_the_slab_and_counts_the_dummy():
    slab = StateSlab(_engine(), initial_capacity=2, max_capacity=100, max_bytes=5 * PER_SESSION)
    assert slab.max_capacity == 5
    while slab.has_free() or slab.needs_growth():
        if slab.needs_growth():
            slab.grow()
        slab.take()
    assert slab.capacity == 5 and slab.nbytes == 5 * PER_SESSION
    padded = _engine(static_batches=True, pad_to_buckets=True)
    slab = StateSlab(padded, initial_capacity=8, max_capacity=100, max_bytes=5 * PER_SESSION)
    assert slab.max_capacity == 4 and slab.nbytes == 5 * PER_SESSION
    # The session limit still applies when it is the smaller.
    assert (
        StateSlab(_engine(), initial_capacity=1, max_capacity=3, max_bytes=1 << 30).max_capacity
        == 3
    )
    # Less than one session's bytes: no session fits, and creating one is CAPACITY_FULL.
    tiny = StateSlab(_engine(), initial_capacity=4, max_capacity=4, max_bytes=PER_SESSION - 1)
    table = SessionTable(tiny, tiny.release, max_sessions=4, eviction="reject", default_ttl=0)
    assert tiny.capacity == 0 and not tiny.needs_growth()
    with pytest.raises(CapacityFull):
        table.create("a", None)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        MemoryError(),
    ],
)
def test_out_of_memory_at_growth_stops_growth_and_keeps_the_states(monkeypatch, error):
    engine = _engine()
    slab = StateSlab(engine, initial_capacity=2, max_capacity=64)
    table = SessionTable(slab, slab.release, max_sessions=64, eviction="reject", default_ttl=0)
    a, _ = table.create("a", None)
    table.create("b", None)
    slab.write(a.slot, torch.full((2, 16), 0.25))
    assert slab.needs_growth()

    def no_memory(capacity: int) -> torch.Tensor:
        raise error

    monkeypatch.setattr(engine, "new_slab", no_memory)
    slab.grow()
    assert slab.capacity == 2 and slab.max_capacity == 2 and not slab.needs_growth()
    assert torch.equal(slab.read(a.slot), torch.full((2, 16), 0.25))
    with pytest.raises(CapacityFull):
        table.create("c", None)


def test_other_errors_at_growth_still_raise(monkeypatch):
    engine = _engine()
    slab = StateSlab(engine, initial_capacity=1, max_capacity=4)
    slab.take()

    def broken(capacity: int) -> torch.Tensor:
        raise RuntimeError("some other failure")

    monkeypatch.setattr(engine, "new_slab", broken)
    with pytest.raises(RuntimeError, match="other failure"):
        slab.grow()
    assert slab.needs_growth()
    assert not is_out_of_memory(RuntimeError("some other failure"))


async def test_runtime_turns_out_of_memory_at_growth_into_capacity_full(monkeypatch):
    settings = settings_for(initial_capacity=2, max_sessions=64, max_state_bytes=1 << 20)
    runtime = ModelRuntime(make_model("dense"), settings, torch.device("cpu"), Observer())
    await runtime.start()
    try:
        first = await runtime.create_session("a", None)
        await runtime.create_session("b", None)

        def no_memory(capacity: int) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory")

        monkeypatch.setattr(runtime.engine, "new_slab", no_memory)
        with pytest.raises(CapacityFull):
            await runtime.create_session("c", None)
        stats = runtime.stats()
        assert stats.slab_capacity == 2 and stats.slab_used == 2
        assert stats.weights_bytes == runtime.engine.weights_bytes > 0
        assert stats.graph_bytes == 0  # no static buffers on CPU by default
        assert (await runtime.export_state(first)).shape == (2, 16)
    finally:
        await runtime.stop()
