"""Each precision against the float32 nn.GRU reference, with stated tolerances.

bfloat16 keeps 8 bits of mantissa (relative step 2^-8 ≈ 4e-3), float16 keeps
11 (≈ 5e-4); a GRU's state is bounded in (-1, 1), so absolute tolerances
over a short sequence are a few of those steps. float32 is the exact path
(1e-5, as every equivalence test). docs/gpu.md has the drift over 10,000 steps.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode
from seqinfer.service.slab import StateSlab
from tests.support import make_model, reference_run

DEVICE = torch.device(os.environ.get("SEQINFER_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("SEQINFER_TEST_DEVICE=cuda but no GPU", allow_module_level=True)

# precision -> (dtype of weights and state, absolute tolerance over 30 steps)
TOLERANCES = {
    "model": (torch.float32, 1e-5),
    "float32": (torch.float32, 1e-5),
    "float16": (torch.float16, 1e-2),
    "bfloat16": (torch.bfloat16, 5e-2),
}


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("precision", sorted(TOLERANCES))
def test_precision_matches_float32_nn_gru_within_its_tolerance(precision: str, padded: bool):
    dtype, tolerance = TOLERANCES[precision]
    model = make_model("dense", layers=2, seed=21)
    engine = GRUEngine(
        model,
        DEVICE,
        precision=precision,  # type: ignore[arg-type]
        max_batch_size=8,
        static_batches=padded,
        pad_to_buckets=padded,
    )
    assert engine.dtype is dtype and engine.gru.weight_hh_l0.dtype is dtype
    slab = engine.new_slab(6)
    assert slab.dtype is dtype
    rng = np.random.default_rng(2)
    history = [rng.standard_normal((30, 8)).astype(np.float32) for _ in range(5)]
    for t in range(30):
        items = [
            EngineItem(s, history[s][t : t + 1], output_mode=OutputMode.LAST, return_state=True)
            for s in range(5)
        ]
        results = engine.run(slab, items)
    for s, result in enumerate(results):
        want_out, want_state = reference_run(model, history[s])
        # Replies keep the model's dtype (float32), whatever the engine runs in.
        assert result.outputs.dtype == np.float32 and result.state.dtype == np.float32
        np.testing.assert_allclose(result.outputs, want_out[-1], atol=tolerance, rtol=0)
        np.testing.assert_allclose(result.state, want_state, atol=tolerance, rtol=0)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_long_chunks_and_export(precision: str):
    """The nn.GRU chunk path runs in the precision too; export keeps the model's dtype."""
    dtype, tolerance = TOLERANCES[precision]
    model = make_model("tokens", layers=2, input_size=30, seed=3)
    engine = GRUEngine(model, DEVICE, long_chunk_threshold=4, precision=precision)  # type: ignore[arg-type]
    slab = StateSlab(engine, initial_capacity=2, max_capacity=2)
    x = np.random.default_rng(5).integers(0, 30, size=20)
    result = engine.run(slab.tensor, [EngineItem(1, x, output_mode=OutputMode.ALL)])[0]
    want_out, want_state = reference_run(model, x)
    np.testing.assert_allclose(result.outputs, want_out, atol=tolerance, rtol=0)
    exported = slab.read(1)
    assert exported.dtype is torch.float32 and slab.tensor.dtype is dtype
    np.testing.assert_allclose(exported.numpy(), want_state, atol=tolerance, rtol=0)
    # An imported float32 state is stored in the engine's precision.
    slab.write(0, torch.full((2, 16), 0.5))
    assert slab.tensor[:, 0].dtype is dtype and bool((slab.tensor[:, 0] == 0.5).all())


def test_weights_bytes_follow_the_precision():
    model = make_model("dense", layers=2)
    full = GRUEngine(model, torch.device("cpu"))
    half = GRUEngine(model, torch.device("cpu"), precision="bfloat16")
    expected = sum(t.numel() * 4 for t in model.tensors.values())
    assert full.weights_bytes == expected and half.weights_bytes == expected // 2
