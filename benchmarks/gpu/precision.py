"""How far reduced precision drifts from float32 nn.GRU over a long sequence.

Runs B sessions of a model for T single steps through ``GRUEngine`` at each
precision, beside ``torch.nn.GRU`` in float32 carrying the same state, and
records the largest absolute state and output error at steps 1, 10, 100, ...
Works on CPU and CUDA (``--device``); the GPU device script runs it on CUDA.

    python -m benchmarks.gpu.precision --steps 10000 --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.models.spec import LoadedModel

PRECISIONS = ("float32", "bfloat16", "float16")


def drift(
    model: LoadedModel,
    precision: str,
    *,
    steps: int = 10_000,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Max |engine - float32 nn.GRU| of states and outputs at checkpoints 1, 10, 100, ..."""
    dev = torch.device(device)
    engine = GRUEngine(model, dev, precision=precision)  # type: ignore[arg-type]
    reference = GRUEngine(model, dev, precision="float32")
    slab, ref_slab = engine.new_slab(batch), reference.new_slab(batch)
    rng = np.random.default_rng(seed)
    checkpoints = {10**k for k in range(8)} | {steps}
    rows = []
    with torch.no_grad():
        for t in range(1, steps + 1):
            x = rng.standard_normal((batch, 1, model.spec.input_size)).astype(np.float32)
            items = [EngineItem(s, x[s], output_mode=OutputMode.LAST) for s in range(batch)]
            got = engine.run(slab, items)
            want = reference.run(ref_slab, items)
            if t in checkpoints:
                out_err = max(
                    float(np.abs(g.outputs.astype(np.float64) - w.outputs).max())
                    for g, w in zip(got, want)
                )
                state_err = float((slab.double() - ref_slab.double()).abs().max())
                rows.append(
                    {"precision": precision, "step": t, "state_err": state_err, "out_err": out_err}
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.precision", description=__doc__)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = bench_gru()
    for precision in PRECISIONS:
        for row in drift(model, precision, steps=args.steps, batch=args.batch, device=args.device):
            print(json.dumps({"device": args.device, "model": model.spec.name, **row}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
