"""The single-step batch on static buffers: batch-size buckets, padding, CUDA graphs.

Why: on a GPU a batched step is a dozen small kernels whose launch cost is
more than their math, and a host tensor built per batch costs a blocking
copy. Here every batch of single steps runs on buffers made once: inputs
and slot indices are written into pinned host buffers and copied to the
device without blocking; the layers read and write fixed device buffers, so
on CUDA they can be captured once per bucket as a ``torch.cuda.CUDAGraph``
and replayed as one launch.

A graph fixes its shapes, so a batch is padded to its bucket (powers of two
up to the largest batch): padding rows read zero inputs and point at the
slab's reserved dummy slot, which is never given to a session, so padding
never reads or writes a real session's state. Rows are independent in every
kernel of the step (matrix products are row by row, the head's softmax too),
so padding never changes a real row either. The gather from the slab and the
scatter back stay outside the graph: the slab can grow (its tensor is
replaced) without a new capture.

On CPU there is no graph: the same staging, padding and dummy-slot scatter
run eagerly (an engine option that tests use), which proves on CI the logic
the graphs rely on.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

# The step on static buffers: (inputs [B, ...], h [L, B, H]) -> writes new
# states into new_h [L, B, H] and outputs into out [B, O].
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def bucket_for(batch: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds ``batch`` rows."""
    i = bisect.bisect_left(sizes, batch)
    if batch < 1 or i == len(sizes):
        raise ValueError(f"batch of {batch} fits no bucket of {tuple(sizes)}")
    return sizes[i]


def pad_slots(slots: np.ndarray, bucket: int, dummy: int, out: np.ndarray) -> np.ndarray:
    """``slots`` then ``dummy`` up to ``bucket`` rows, written into ``out[:bucket]``.

    The real slots are distinct (the scheduler never batches one session
    twice), so the only index a scatter of the padded batch writes more than
    once is the dummy's.
    """
    n = len(slots)
    if n > bucket:
        raise ValueError(f"{n} slots do not fit a bucket of {bucket}")
    out[:n] = slots
    out[n:bucket] = dummy
    return out[:bucket]


class StaticStep:
    """Static device buffers for batches of single steps, sized for the largest batch."""

    def __init__(
        self,
        step: StepFn,
        *,
        max_batch: int,
        row_shape: tuple[int, ...],
        input_dtype: torch.dtype,
        layers: int,
        hidden: int,
        out_features: int,
        dtype: torch.dtype,
        device: torch.device,
        pad: bool,
    ) -> None:
        self._step = step
        self.device = device
        self.max_batch = max_batch
        self.sizes = bucket_sizes(max_batch) if pad else ()
        self._layers, self._hidden, self._out_features = layers, hidden, out_features
        self._x = torch.zeros((max_batch, *row_shape), dtype=input_dtype, device=device)
        self._slots = torch.zeros(max_batch, dtype=torch.int64, device=device)
        # Flat, so that each bucket's [L, B, H] view is contiguous at a fixed address.
        self._h = torch.zeros(layers * max_batch * hidden, dtype=dtype, device=device)
        self._new_h = torch.zeros_like(self._h)
        self._out = torch.zeros(max_batch * out_features, dtype=dtype, device=device)
        self._staged = device.type == "cuda"
        if self._staged:
            self._x_host = torch.zeros_like(self._x, device="cpu").pin_memory()
            self._slots_host = torch.zeros_like(self._slots, device="cpu").pin_memory()
        else:
            # On CPU the device buffers are host memory: write them directly.
            self._x_host, self._slots_host = self._x, self._slots
        self._x_np = self._x_host.numpy()
        self._slots_np = self._slots_host.numpy()
        self._copied: torch.cuda.Event | None = None
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_pool_bytes = 0

    @property
    def buffer_bytes(self) -> int:
        tensors = (self._x, self._slots, self._h, self._new_h, self._out)
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def captured(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def _views(self, rows: int) -> tuple[torch.Tensor, ...]:
        layers, hidden = self._layers, self._hidden
        h = self._h[: layers * rows * hidden].view(layers, rows, hidden)
        new_h = self._new_h[: layers * rows * hidden].view(layers, rows, hidden)
        out = self._out[: rows * self._out_features].view(rows, self._out_features)
        return self._x[:rows], self._slots[:rows], h, new_h, out

    def rows_for(self, batch: int) -> int:
        return bucket_for(batch, self.sizes) if self.sizes else batch

    # -------------------------------------------------------------- capture --

    def capture(self) -> float:
        """Capture one CUDA graph per bucket; returns the seconds it took."""
        if self.device.type != "cuda" or not self.sizes:
            return 0.0
        started = time.perf_counter()
        torch.cuda.synchronize(self.device)
        reserved = torch.cuda.memory_reserved(self.device)
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        # Largest first: the smaller graphs then fit in the pool it left.
        for rows in reversed(self.sizes):
            x, _, h, new_h, out = self._views(rows)
            # Warm-up off the capture (cuBLAS picks and allocates its workspace).
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(x, h, new_h, out)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(x, h, new_h, out)
            self._graphs[rows] = graph
        torch.cuda.synchronize(self.device)
        self.graph_pool_bytes = torch.cuda.memory_reserved(self.device) - reserved
        return time.perf_counter() - started

    # ------------------------------------------------------------------ run --

    def run(
        self, slab: torch.Tensor, parts: list[np.ndarray], slots: np.ndarray, dummy: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``len(slots)`` sessions; their inputs are ``parts`` (one row each).

        Returns the new states [L, rows, H] and outputs [rows, O] of the
        padded batch (real rows first), views of the static buffers that the
        next call overwrites. ``dummy`` is the slab's reserved column.
        """
        n = len(slots)
        rows = self.rows_for(n)
        if self._copied is not None:
            # The last batch's host-to-device copy must finish before its
            # pinned source is overwritten (a batch that copied nothing back
            # never waited for it).
            self._copied.synchronize()
        np.concatenate(parts, out=self._x_np[:n], casting="same_kind")
        self._x_np[n:rows] = 0
        pad_slots(slots, rows, dummy, self._slots_np)
        x, slot_index, h, new_h, out = self._views(rows)
        if self._staged:
            x.copy_(self._x_host[:rows], non_blocking=True)
            slot_index.copy_(self._slots_host[:rows], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._copied = event
        torch.index_select(slab, 1, slot_index, out=h)
        graph = self._graphs.get(rows)
        if graph is not None:
            graph.replay()
        else:
            self._step(x, h, new_h, out)
        slab.index_copy_(1, slot_index, new_h)
        return new_h, out
