"""The models the shared server serves, and inputs and replies for them.

One generator draws every input: each test compares the server's replies with
torch run on the very inputs it sent, so any values serve.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqinfer.client import StepOutput
from seqinfer.service.models.builtin import bench_gru
from tests.support import make_model

BENCH = bench_gru()
TOKENS = make_model("tokens", name="tok", input_size=30, output_kind="probabilities", seed=3)
RNG = np.random.default_rng(7)


def outputs(out: StepOutput | Any) -> np.ndarray:
    """A reply's outputs, which these tests always ask for."""
    assert isinstance(out, StepOutput) and out.outputs is not None, out
    return out.outputs


def frames(t: int) -> np.ndarray:
    return RNG.standard_normal((t, 64), dtype=np.float32)
