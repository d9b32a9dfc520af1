"""The engine alone on a device: batch sweep with CUDA graphs on/off, and resident sessions.

``sweep``: ``GRUEngine.run`` over B single steps at scattered slots, for B in
1..65,536, graphs on and off: ms per batch, steps/s, and the fraction of the
device's fp32 peak the step's matrix products reach (TF32 off).
``resident``: step latency at batch 256 with 10 M sessions resident in the
slab against 10 k (the slab's size must not matter).

    python -m benchmarks.gpu.engine_bench sweep --device cuda
    python -m benchmarks.gpu.engine_bench resident --device cuda --sessions 10000000

Timing syncs the device around each call (``torch.cuda.synchronize``), so a
figure is the latency of a batch, including the copy of its outputs back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from seqinfer.service.engine import EngineItem, GRUEngine
from seqinfer.service.models.builtin import bench_gru, bench_gru_large
from seqinfer.service.models.spec import LoadedModel

BATCHES = tuple(2**k for k in range(17))  # 1 .. 65,536
# H200 SXM dense fp32 (no tensor cores), from NVIDIA's datasheet.
H200_FP32_FLOPS = 67e12
MODELS = {"bench-gru": bench_gru, "bench-gru-large": bench_gru_large}


def step_flops(model: LoadedModel, batch: int) -> float:
    """Multiply-adds x 2 of one single step's matrix products (layers and head)."""
    spec = model.spec
    h = spec.hidden_size
    flops = 0
    for k in range(spec.num_layers):
        in_k = spec.gru_input_size if k == 0 else h
        flops += 2 * batch * 3 * h * (in_k + h)
    if spec.has_head:
        flops += 2 * batch * h * spec.output_size
    return float(flops)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    engine: GRUEngine, slab: torch.Tensor, items: list[EngineItem], min_seconds: float
) -> list[float]:
    for _ in range(3):
        engine.run(slab, items)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < min_seconds:
        _sync(engine.device)
        t0 = time.perf_counter()
        engine.run(slab, items)
        _sync(engine.device)
        times.append(time.perf_counter() - t0)
    return sorted(times)


def _items(
    model: LoadedModel, batch: int, capacity: int, rng: np.random.Generator
) -> list[EngineItem]:
    size = model.spec.input_size
    slots = rng.choice(capacity, size=batch, replace=False)
    x = rng.standard_normal((batch, 1, size)).astype(np.float32)
    return [EngineItem(int(s), x[i]) for i, s in enumerate(slots)]


def sweep(
    device: str, models: list[str], batches: tuple[int, ...], min_seconds: float, peak: float
) -> list[dict[str, Any]]:
    dev = torch.device(device)
    rows = []
    for name in models:
        model = MODELS[name]()
        for graphs in (True, False):
            engine = GRUEngine(model, dev, max_batch_size=max(batches), cuda_graphs=graphs)
            capture_s = engine.capture_graphs()
            capacity = 2 * max(batches)
            slab = engine.new_slab(capacity)
            rng = np.random.default_rng(0)
            for batch in batches:
                times = time_batches(engine, slab, _items(model, batch, capacity, rng), min_seconds)
                median = times[len(times) // 2]
                row = {
                    "part": "sweep",
                    "model": name,
                    "graphs": graphs and dev.type == "cuda",
                    "batch": batch,
                    "median_ms": median * 1e3,
                    "best_ms": times[0] * 1e3,
                    "steps_per_s": batch / median,
                    "fp32_peak_fraction": step_flops(model, batch) / median / peak,
                    "capture_s": capture_s,
                    "graph_bytes": engine.graph_bytes,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            del engine, slab
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def resident(
    device: str, sessions: list[int], batch: int, min_seconds: float
) -> list[dict[str, Any]]:
    dev = torch.device(device)
    model = bench_gru()
    engine = GRUEngine(model, dev, max_batch_size=batch)
    engine.capture_graphs()
    rows = []
    for count in sessions:
        slab = engine.new_slab(count)
        rng = np.random.default_rng(1)
        times = time_batches(engine, slab, _items(model, batch, count, rng), min_seconds)
        row = {
            "part": "resident",
            "model": model.spec.name,
            "resident": count,
            "batch": batch,
            "slab_bytes": slab.numel() * slab.element_size(),
            "median_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del slab
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.engine_bench", description=__doc__)
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--device", default="cuda")
    s.add_argument("--models", default="bench-gru,bench-gru-large")
    s.add_argument("--batches", default=",".join(map(str, BATCHES)))
    s.add_argument("--min-seconds", type=float, default=0.2)
    s.add_argument("--peak-flops", type=float, default=H200_FP32_FLOPS)
    r = sub.add_parser("resident")
    r.add_argument("--device", default="cuda")
    r.add_argument("--sessions", default="10000,10000000")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--min-seconds", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.part == "sweep":
        batches = tuple(int(b) for b in args.batches.split(","))
        sweep(args.device, args.models.split(","), batches, args.min_seconds, args.peak_flops)
    else:
        counts = [int(c) for c in args.sessions.split(",")]
        resident(args.device, counts, args.batch, args.min_seconds)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
