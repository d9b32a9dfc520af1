"""Batch-size buckets and padding to the slab's dummy slot, proven on the CPU.

CUDA graphs replay a fixed batch shape, so the engine pads a batch to its
bucket with rows that point at a reserved dummy slot. These tests run that
same padded path eagerly on the CPU (``pad_to_buckets=True``): every real
session ends exactly where nn.GRU puts it, the dummy absorbs the padding, and
no real slot is written twice or by another session's row.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode
from seqinfer.service.graphs import bucket_for, bucket_sizes, pad_slots
from seqinfer.service.slab import StateSlab
from tests.support import make_model, reference_run

DEVICE = torch.device(os.environ.get("SEQINFER_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("SEQINFER_TEST_DEVICE=cuda but no GPU", allow_module_level=True)


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(300) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 300)
    sizes = bucket_sizes(256)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 5, 8, 9, 129, 256)] == [
        1, 2, 4, 8, 8, 16, 256, 256,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        bucket_for(257, sizes)
    with pytest.raises(ValueError):
        bucket_for(0, sizes)
    with pytest.raises(ValueError):
        bucket_sizes(0)


def test_padding_points_only_at_the_dummy():
    out = np.full(16, -1, np.int64)
    padded = pad_slots(np.array([7, 2, 9, 0, 4]), 8, dummy=12, out=out)
    assert padded.tolist() == [7, 2, 9, 0, 4, 12, 12, 12]
    assert out[8:].tolist() == [-1] * 8  # nothing past the bucket is touched
    with pytest.raises(ValueError):
        pad_slots(np.arange(9), 8, dummy=12, out=out)


class _SlabWrites(TorchFunctionMode):
    """Records the column indices of every index_copy_ into one tensor."""

    def __init__(self, slab: torch.Tensor) -> None:
        super().__init__()
        self.slab = slab
        self.columns: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.index_copy_ and args[0] is self.slab:
            self.columns.extend(args[2].tolist())
        return func(*args, **kwargs)


@pytest.mark.parametrize(("kind", "layers"), [("dense", 1), ("dense", 3), ("tokens", 2)])
def test_padded_batch_of_5_in_bucket_8_matches_nn_gru(kind: str, layers: int):
    model = make_model(kind, layers=layers, input_size=30 if kind == "tokens" else 8, seed=5)
    engine = GRUEngine(model, DEVICE, max_batch_size=8, static_batches=True, pad_to_buckets=True)
    assert engine.reserved_slots == 1
    capacity = 10
    slab = engine.new_slab(capacity)
    dummy = capacity  # the reserved column follows the sessions'
    assert slab.shape[1] == capacity + 1
    rng = np.random.default_rng(4)
    real = [3, 0, 8, 5, 9]
    sent: dict[int, list[np.ndarray]] = {s: [] for s in real}
    for step in range(12):
        items = []
        for s in real:
            if kind == "tokens":
                x = rng.integers(0, 30, size=1)
            else:
                x = rng.standard_normal((1, 8)).astype(np.float32)
            sent[s].append(x)
            mode = [OutputMode.LAST, OutputMode.ALL, OutputMode.NONE][(s + step) % 3]
            items.append(EngineItem(s, x, output_mode=mode, return_state=s % 2 == 1))
        writes = _SlabWrites(slab)
        with writes:
            results = engine.run(slab, items)
        # One scatter: each real slot exactly once, every other row at the dummy.
        assert sorted(c for c in writes.columns if c != dummy) == sorted(real)
        assert len(writes.columns) == 8 and writes.columns.count(dummy) == 3
        for item, result in zip(items, results):
            want_out, want_state = reference_run(model, np.concatenate(sent[item.slot]))
            got_state = slab[:, item.slot].float().cpu().numpy()
            np.testing.assert_allclose(got_state, want_state, atol=1e-5, rtol=0)
            if item.return_state:
                np.testing.assert_allclose(result.state, want_state, atol=1e-5, rtol=0)
            else:
                assert result.state is None
            if item.output_mode is OutputMode.NONE:
                assert result.outputs is None
            elif item.output_mode is OutputMode.LAST:
                np.testing.assert_allclose(result.outputs, want_out[-1], atol=1e-5, rtol=0)
            else:
                np.testing.assert_allclose(result.outputs, want_out[-1:], atol=1e-5, rtol=0)
    untouched = [s for s in range(capacity) if s not in real]
    assert torch.count_nonzero(slab[:, untouched]) == 0
    assert torch.count_nonzero(slab[:, dummy]) > 0  # the padding's garbage went there


def test_replies_are_not_views_of_buffers_the_next_batch_overwrites():
    model = make_model("dense", layers=2)
    engine = GRUEngine(model, DEVICE, max_batch_size=4, static_batches=True, pad_to_buckets=True)
    slab = engine.new_slab(4)
    x = np.ones((1, 8), np.float32)
    first = engine.run(slab, [EngineItem(0, x, return_state=True), EngineItem(1, x)])
    kept_out, kept_state = first[0].outputs.copy(), first[0].state.copy()
    engine.run(slab, [EngineItem(2, -x, return_state=True), EngineItem(3, 5 * x)])
    np.testing.assert_array_equal(first[0].outputs, kept_out)
    np.testing.assert_array_equal(first[0].state, kept_state)


def test_static_path_without_padding_and_batches_past_the_largest_bucket():
    """Unpadded static buffers (CUDA with graphs off), and the plain path beyond them."""
    model = make_model("dense", layers=2, seed=9)
    engine = GRUEngine(model, DEVICE, max_batch_size=4, static_batches=True, pad_to_buckets=False)
    assert engine.reserved_slots == 0
    slab = engine.new_slab(8)
    rng = np.random.default_rng(0)
    sent: dict[int, list[np.ndarray]] = {s: [] for s in range(8)}
    for batch in (3, 8, 1, 4):  # 8 > max_batch_size takes the plain path
        items = []
        for s in range(batch):
            x = rng.standard_normal((1, 8)).astype(np.float32)
            sent[s].append(x)
            items.append(EngineItem(s, x, output_mode=OutputMode.LAST))
        for item, result in zip(items, engine.run(slab, items)):
            want_out, _ = reference_run(model, np.concatenate(sent[item.slot]))
            np.testing.assert_allclose(result.outputs, want_out[-1], atol=1e-5, rtol=0)


def test_the_slab_reserves_the_dummy_without_counting_it():
    model = make_model("dense", layers=2)
    engine = GRUEngine(model, DEVICE, max_batch_size=8, static_batches=True, pad_to_buckets=True)
    slab = StateSlab(engine, initial_capacity=2, max_capacity=5)
    assert slab.capacity == 2 and slab.tensor.shape[1] == 3
    slots = []
    while slab.has_free() or slab.needs_growth():
        if slab.needs_growth():
            slab.grow()
        slots.append(slab.take())
    assert sorted(slots) == [0, 1, 2, 3, 4]  # never the dummy
    assert slab.capacity == 5 and slab.tensor.shape[1] == 6
    x = np.ones((1, 8), np.float32)
    engine.run(slab.tensor, [EngineItem(s, x) for s in slots])  # 5 padded to 8
    assert torch.count_nonzero(slab.tensor[:, 5]) > 0
    # Growth copies the sessions' columns only: the new dummy starts at zero.
    grown = StateSlab(engine, initial_capacity=1, max_capacity=2)
    grown.tensor[:, 1] = 7.0  # the old dummy column
    grown.grow()
    assert torch.count_nonzero(grown.tensor[:, 1:]) == 0


def test_default_cpu_engine_keeps_the_plain_path():
    engine = GRUEngine(make_model("dense"), torch.device("cpu"))
    assert engine.static is None and engine.reserved_slots == 0 and engine.graph_bytes == 0
    assert engine.capture_graphs() == 0.0
    assert engine.new_slab(4).shape == (2, 4, 16)
