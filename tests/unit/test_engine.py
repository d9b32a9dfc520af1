"""The engine against torch.nn.GRU over whole sequences, on the CPU.

``SEQINFER_TEST_DEVICE=cuda`` runs the same tests on the GPU (the device
script does); they are skipped there when no GPU is present.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode
from tests.support import make_model, reference_run

DEVICE = torch.device(os.environ.get("SEQINFER_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("SEQINFER_TEST_DEVICE=cuda but no GPU", allow_module_level=True)

CASES = [
    ("dense", 1, "logits"),
    ("dense", 3, "values"),
    ("tokens", 1, "probabilities"),
    ("tokens", 2, "logits"),
    ("dense", 2, "hidden"),
]


def _inputs(model, length: int, rng: np.random.Generator) -> np.ndarray:
    spec = model.spec
    if spec.input_kind == "tokens":
        return rng.integers(0, spec.input_size, size=length).astype(np.int64)
    return rng.standard_normal((length, spec.input_size)).astype(np.float32)


@pytest.mark.parametrize(("kind", "layers", "output_kind"), CASES)
def test_interleaved_batches_equal_full_sequence_gru(kind: str, layers: int, output_kind: str):
    model = make_model(kind, layers=layers, output_kind=output_kind, seed=layers)
    engine = GRUEngine(model, DEVICE, long_chunk_threshold=6)
    slab = engine.new_slab(12)
    rng = np.random.default_rng(1)
    pick = random.Random(2)
    sent: dict[int, list[np.ndarray]] = {s: [] for s in range(12)}
    got: dict[int, list[np.ndarray]] = {s: [] for s in range(12)}
    for _ in range(15):
        slots = pick.sample(range(12), pick.randint(1, 12))
        items = []
        for slot in slots:
            x = _inputs(model, pick.choice([1, 1, 1, 2, 5, 6, 9]), rng)
            sent[slot].append(x)
            items.append(EngineItem(slot, x, output_mode=OutputMode.ALL))
        for slot, result in zip(slots, engine.run(slab, items)):
            got[slot].append(result.outputs)
    for slot in range(12):
        if not sent[slot]:
            continue
        want_out, want_state = reference_run(model, np.concatenate(sent[slot]))
        np.testing.assert_allclose(np.concatenate(got[slot]), want_out, atol=1e-5, rtol=0)
        np.testing.assert_allclose(slab[:, slot].cpu().numpy(), want_state, atol=1e-5, rtol=0)


def test_output_modes_state_and_reset():
    model = make_model("dense")
    engine = GRUEngine(model, DEVICE)
    slab = engine.new_slab(4)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    last, none, full = engine.run(
        slab,
        [
            EngineItem(0, x, output_mode=OutputMode.LAST, return_state=True),
            EngineItem(1, x, output_mode=OutputMode.NONE),
            EngineItem(2, x, output_mode=OutputMode.ALL),
        ],
    )
    assert last.outputs.shape == (5,) and none.outputs is None and full.outputs.shape == (3, 5)
    np.testing.assert_array_equal(last.outputs, full.outputs[-1])
    np.testing.assert_array_equal(last.state, slab[:, 0].cpu().numpy())
    torch.testing.assert_close(slab[:, 0], slab[:, 1])
    # reset zeroes the state first: same as a fresh slot
    again = engine.run(slab, [EngineItem(0, x, reset=True, output_mode=OutputMode.ALL)])[0]
    np.testing.assert_allclose(again.outputs, full.outputs, atol=1e-6, rtol=0)
    assert torch.count_nonzero(slab[:, 3]) == 0  # untouched slot stays zero


def test_long_chunk_path_matches_step_path():
    model = make_model("dense", layers=2)
    step_engine = GRUEngine(model, DEVICE, long_chunk_threshold=1000)
    long_engine = GRUEngine(model, DEVICE, long_chunk_threshold=2)
    x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    a_slab, b_slab = step_engine.new_slab(2), long_engine.new_slab(2)
    a = step_engine.run(a_slab, [EngineItem(1, x, output_mode=OutputMode.ALL)])[0]
    b = long_engine.run(b_slab, [EngineItem(1, x, output_mode=OutputMode.ALL)])[0]
    np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-5, rtol=0)
    torch.testing.assert_close(a_slab, b_slab, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 7])
def test_single_step_fast_path_equals_full_sequence_gru(batch: int):
    model = make_model("tokens", layers=2, input_size=30, seed=11)
    engine = GRUEngine(model, DEVICE)
    slab = engine.new_slab(10)
    rng = np.random.default_rng(3)
    modes = [OutputMode.LAST, OutputMode.ALL, OutputMode.NONE]
    sent: dict[int, list[np.ndarray]] = {s: [] for s in range(batch)}
    for step in range(6):
        items = []
        for s in range(batch):
            x = rng.integers(0, 30, size=1)
            sent[s].append(x)
            items.append(EngineItem(s + 2, x, output_mode=modes[(s + step) % 3], return_state=True))
        results = engine.run(slab, items)
        for s, (item, result) in enumerate(zip(items, results)):
            want_out, want_state = reference_run(model, np.concatenate(sent[s]))
            np.testing.assert_allclose(result.state, want_state, atol=1e-5, rtol=0)
            if item.output_mode is OutputMode.NONE:
                assert result.outputs is None
            elif item.output_mode is OutputMode.LAST:
                np.testing.assert_allclose(result.outputs, want_out[-1], atol=1e-5, rtol=0)
            else:
                np.testing.assert_allclose(result.outputs, want_out[-1:], atol=1e-5, rtol=0)
    assert torch.count_nonzero(slab[:, :2]) == 0  # neighbours untouched
