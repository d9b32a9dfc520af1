"""The compute limit: seqinfer's engine alone, in-process, one batched step at a time.

Each timing is one ``GRUEngine.run`` over B single-timestep items whose
sessions sit at scattered slots of a slab: gather (index_select), two
``gru_cell`` layers, scatter (index_copy_), the linear head, and the split of
outputs per item. Items are built before the clock starts (building them is
the scheduler's job, measured with the server), with inputs as the api hands
them to the engine: numpy views of request bytes, joined once per batch. Torch uses the thread count
the server would use, so this is the ceiling of what the server's engine
thread can deliver on this machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from seqinfer.service.engine import EngineItem, GRUEngine
from seqinfer.service.models.spec import LoadedModel

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class ComputePoint:
    model: str
    batch: int
    threads: int
    repeats: int
    # Median and best time of one engine.run call.
    median_ms: float
    best_ms: float
    # Session-steps per second at the median time: batch / median.
    steps_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _items(model: LoadedModel, batch: int, capacity: int, seed: int) -> list[EngineItem]:
    """Items as the api builds them: read-only float32 numpy views of request bytes."""
    rng = np.random.default_rng(seed)
    slots = rng.permutation(capacity)[:batch].tolist()
    size = model.spec.input_size
    return [
        EngineItem(slot=s, inputs=np.frombuffer(_wire_floats(rng, size), "<f4").reshape(1, size))
        for s in slots
    ]


def _wire_floats(rng: np.random.Generator, count: int) -> bytes:
    return rng.standard_normal(count).astype("<f4").tobytes()


def measure_engine(
    model: LoadedModel,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    threads: int = 1,
    min_seconds: float = 0.4,
    min_repeats: int = 5,
) -> list[ComputePoint]:
    """Time ``GRUEngine.run`` at each batch size; at least `min_seconds` per size."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = GRUEngine(model, torch.device("cpu"))
        capacity = max(8192, 2 * max(batch_sizes))
        slab = engine.new_slab(capacity)
        points = []
        for batch in batch_sizes:
            items = _items(model, batch, capacity, seed=batch)
            for _ in range(3):  # warm-up: allocator, kernels' first-call paths
                engine.run(slab, items)
            times: list[float] = []
            started = time.perf_counter()
            while len(times) < min_repeats or time.perf_counter() - started < min_seconds:
                t0 = time.perf_counter()
                engine.run(slab, items)
                times.append(time.perf_counter() - t0)
            times.sort()
            median = times[len(times) // 2]
            points.append(
                ComputePoint(
                    model=model.spec.name,
                    batch=batch,
                    threads=threads,
                    repeats=len(times),
                    median_ms=median * 1e3,
                    best_ms=times[0] * 1e3,
                    steps_per_s=batch / median,
                )
            )
        return points
    finally:
        torch.set_num_threads(previous)
