"""The batched GRU step on one device: gather states → step → scatter.

Exactly ``torch.nn.GRU``'s math (DESIGN.md): the step path calls
``torch.gru_cell`` (the kernel ``nn.GRUCell`` uses) layer by layer, and long
chunks of one session run through the model's own ``nn.GRU`` over the whole
chunk. Everything here runs in the order of the model's worker, which also
orders every other slab access (on the worker thread, or on the event loop
while the worker is idle: ``Scheduler._execute``), so no lock is needed
around the slab.

On CUDA, batches of single steps run on static buffers (``graphs``): pinned
staging, slot indices on the device, and CUDA graphs per batch-size bucket.
The CPU default keeps the plain path below, which is as fast there.
``precision`` may run a model's weights and state in another floating
dtype than its own; replies keep the model's dtype on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np
import torch
from torch import nn

from seqinfer.service.graphs import StaticStep
from seqinfer.service.models.spec import DTYPES, InputKind, LoadedModel, OutputKind

Precision = Literal["model", "float32", "bfloat16", "float16"]


class OutputMode(IntEnum):
    LAST = 1
    ALL = 2
    NONE = 3


@dataclass(slots=True)
class EngineItem:
    """One session's work in a batch."""

    slot: int
    # [T, input_size] floats (dense) or [T] integer ids (tokens): numpy, as the
    # api decodes them (views of the request's bytes), converted to torch once
    # per batch rather than per item.
    inputs: np.ndarray
    reset: bool = False
    output_mode: OutputMode = OutputMode.LAST
    return_state: bool = False


@dataclass(slots=True)
class EngineResult:
    # [out] for LAST, [T, out] for ALL, None for NONE; a view into the batch's
    # output array (bfloat16 models give float32, numpy has no bfloat16).
    outputs: np.ndarray | None
    # [layers, hidden] after the step, when asked for.
    state: np.ndarray | None


class GRUEngine:
    """A model's weights on a device, and the step over rows of a state slab."""

    def __init__(
        self,
        model: LoadedModel,
        device: torch.device,
        long_chunk_threshold: int = 16,
        *,
        precision: Precision = "model",
        max_batch_size: int = 256,
        static_batches: bool | None = None,
        pad_to_buckets: bool | None = None,
        cuda_graphs: bool = True,
    ):
        """``static_batches`` (default: on CUDA only) runs single-step batches of
        up to ``max_batch_size`` on static buffers; ``pad_to_buckets`` (default:
        where CUDA graphs are used) pads them to their bucket, which reserves a
        dummy slot in every slab this engine makes. Tests turn both on on CPU."""
        spec = model.spec
        self.spec = spec
        self.device = device
        self.long_chunk_threshold = long_chunk_threshold
        self.dtype = spec.torch_dtype if precision == "model" else DTYPES[precision]
        # Replies keep the model's dtype (numpy has no bfloat16: float32).
        self._wire_dtype = torch.float32 if spec.torch_dtype is torch.bfloat16 else spec.torch_dtype
        if device.type == "cuda":
            # Process-wide: TF32 would make float32 differ from nn.GRU on CPU by ~1e-3.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        t = {
            name: tensor.to(device, self.dtype if tensor.is_floating_point() else None)
            for name, tensor in model.tensors.items()
        }
        self.weights_bytes = sum(v.numel() * v.element_size() for v in t.values())
        self.embedding = t["embedding.weight"] if spec.input_kind is InputKind.TOKENS else None
        # The nn.GRU serves long chunks; the step path shares its parameters.
        self.gru = nn.GRU(
            spec.gru_input_size,
            spec.hidden_size,
            spec.num_layers,
            device=device,
            dtype=self.dtype,
        )
        with torch.no_grad():
            for name, param in self.gru.named_parameters():
                param.copy_(t[f"gru.{name}"])
        self.gru.requires_grad_(False)
        self.layers = [
            (
                getattr(self.gru, f"weight_ih_l{k}"),
                getattr(self.gru, f"weight_hh_l{k}"),
                getattr(self.gru, f"bias_ih_l{k}"),
                getattr(self.gru, f"bias_hh_l{k}"),
            )
            for k in range(spec.num_layers)
        ]
        self.head_weight = t.get("head.weight") if spec.has_head else None
        self.head_bias = t.get("head.bias") if spec.has_head else None
        on_cuda = device.type == "cuda"
        pad = (on_cuda and cuda_graphs) if pad_to_buckets is None else pad_to_buckets
        self.static: StaticStep | None = None
        if on_cuda if static_batches is None else static_batches:
            tokens = spec.input_kind is InputKind.TOKENS
            self.static = StaticStep(
                self._static_step,
                max_batch=max_batch_size,
                row_shape=() if tokens else (spec.input_size,),
                input_dtype=torch.int64 if tokens else self._staging_dtype(),
                layers=spec.num_layers,
                hidden=spec.hidden_size,
                out_features=spec.out_features,
                dtype=self.dtype,
                device=device,
                pad=pad,
            )
        # The padded path needs a column no session owns.
        self.reserved_slots = 1 if self.static is not None and pad else 0
        self._cuda_graphs = on_cuda and cuda_graphs and pad

    def _staging_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype is torch.float64 else torch.float32

    @property
    def graph_bytes(self) -> int:
        """Device bytes of the static step buffers and the CUDA graphs' pool."""
        if self.static is None:
            return 0
        return self.static.buffer_bytes + self.static.graph_pool_bytes

    def capture_graphs(self) -> float:
        """Capture the CUDA graphs (if any); returns the seconds it took."""
        if self.static is None or not self._cuda_graphs:
            return 0.0
        return self.static.capture()

    # ------------------------------------------------------------ helpers --

    def new_slab(self, capacity: int) -> torch.Tensor:
        """``capacity`` session columns, then ``reserved_slots`` dummy columns."""
        return torch.zeros(
            self.spec.num_layers,
            capacity + self.reserved_slots,
            self.spec.hidden_size,
            dtype=self.dtype,
            device=self.device,
        )

    def _embed(self, parts: list[np.ndarray]) -> torch.Tensor:
        """Concatenate items' inputs along T and bring them to the model's input space."""
        # np.concatenate copies, so the read-only request buffers are never aliased.
        x = torch.from_numpy(np.concatenate(parts)).to(self.device, non_blocking=True)
        if self.embedding is None:
            return x.to(self.dtype)
        return self.embedding[x.long()]

    def _head(self, top: torch.Tensor) -> torch.Tensor:
        if self.head_weight is None:
            return top
        out = torch.nn.functional.linear(top, self.head_weight, self.head_bias)
        if self.spec.output_kind is OutputKind.PROBABILITIES:
            out = torch.softmax(out, dim=-1)
        return out

    # --------------------------------------------------------------- step --

    @torch.no_grad()
    def run(self, slab: torch.Tensor, items: list[EngineItem]) -> list[EngineResult]:
        """Advance every item's session by its T timesteps, in place in ``slab``.

        The caller guarantees distinct slots. New states are written back with
        one scatter per group at the end, so an exception leaves the slab as
        it was for that group.
        """
        resets = [it.slot for it in items if it.reset]
        if resets:
            slab[:, torch.tensor(resets, device=self.device)] = 0
        if all(it.inputs.shape[0] == 1 for it in items):
            if self.static is not None and len(items) <= self.static.max_batch:
                return self._run_static(slab, items)
            return self._run_single_steps(slab, items)
        long_idx = [
            i for i, it in enumerate(items) if it.inputs.shape[0] >= self.long_chunk_threshold
        ]
        short_idx = [
            i for i, it in enumerate(items) if it.inputs.shape[0] < self.long_chunk_threshold
        ]
        tops: list[torch.Tensor | None] = [None] * len(items)
        if short_idx:
            for i, top in zip(short_idx, self._run_short(slab, [items[i] for i in short_idx])):
                tops[i] = top
        for i in long_idx:
            tops[i] = self._run_long(slab, items[i])
        return self._finish(slab, items, tops)

    def _run_single_steps(self, slab: torch.Tensor, items: list[EngineItem]) -> list[EngineResult]:
        """The common case, T = 1 for every item: no per-item tensors at all.

        Per-item torch objects cost microseconds each, which at batch 256 is
        more than the GRU itself; here the batch is one tensor throughout and
        items get numpy views of one output array.
        """
        x = self._embed([it.inputs for it in items])
        if len(items) == 1:
            # A view of the session's column: gather and scatter are plain copies.
            column = slab[:, items[0].slot : items[0].slot + 1]
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
                x = torch.gru_cell(x, column[k], w_ih, w_hh, b_ih, b_hh)
                column[k] = x
            new_h = column
        else:
            slots = torch.from_numpy(np.fromiter((it.slot for it in items), np.int64, len(items)))
            slots = slots.to(self.device, non_blocking=True)
            h = slab.index_select(1, slots)
            new_states = []
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
                x = torch.gru_cell(x, h[k], w_ih, w_hh, b_ih, b_hh)
                new_states.append(x)
            new_h = torch.stack(new_states)
            slab.index_copy_(1, slots, new_h)
        # The head only when some item wants outputs (OUTPUT_MODE_NONE skips it).
        wanted = any(it.output_mode is not OutputMode.NONE for it in items)
        return self._single_results(items, self._head(x) if wanted else None, new_h, static=False)

    def _run_static(self, slab: torch.Tensor, items: list[EngineItem]) -> list[EngineResult]:
        """Single steps on the static buffers (pinned staging, CUDA graphs, padding)."""
        assert self.static is not None
        slots = np.fromiter((it.slot for it in items), np.int64, len(items))
        dummy = slab.shape[1] - 1  # the reserved column, when padding (else unused)
        new_h, out = self.static.run(slab, [it.inputs for it in items], slots, dummy)
        return self._single_results(items, out, new_h, static=True)

    @torch.no_grad()
    def _static_step(
        self, x: torch.Tensor, h: torch.Tensor, new_h: torch.Tensor, out: torch.Tensor
    ) -> None:
        """What a CUDA graph captures: the layers and the head on static buffers."""
        x = x.to(self.dtype) if self.embedding is None else self.embedding[x]
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            x = torch.gru_cell(x, h[k], w_ih, w_hh, b_ih, b_hh)
            new_h[k].copy_(x)
        out.copy_(self._head(x))

    def _single_results(
        self,
        items: list[EngineItem],
        out: torch.Tensor | None,
        new_h: torch.Tensor,
        *,
        static: bool,
    ) -> list[EngineResult]:
        """Split one batch's outputs [B, O] (None: nobody wants them) and new states
        [L, B, H] (real rows first): one copy to the host for each, not one per
        item. ``static``: they are buffers the next batch overwrites, so the host
        gets a copy."""
        outputs = None
        if out is not None and any(it.output_mode is not OutputMode.NONE for it in items):
            if out.shape[0] != len(items):  # padded: the real rows come first
                out = out[: len(items)]
            outputs = self._to_numpy(out, copy=static)
        asked = [i for i, it in enumerate(items) if it.return_state]
        states: dict[int, np.ndarray] = {}
        if asked:
            rows = new_h if len(asked) == len(items) else new_h[:, asked]
            states = dict(zip(asked, self._host_states(rows[:, : len(asked)])))
        results = []
        for i, it in enumerate(items):
            item_outputs = None
            if outputs is not None:
                if it.output_mode is OutputMode.LAST:
                    item_outputs = outputs[i]
                elif it.output_mode is OutputMode.ALL:
                    item_outputs = outputs[i : i + 1]
            results.append(EngineResult(item_outputs, states.get(i)))
        return results

    def _host_states(self, block: torch.Tensor) -> np.ndarray:
        """States [L, k, H] as one host array [k, L, H]: one copy, never a view
        of the slab or of a static buffer."""
        return self._to_numpy(block.transpose(0, 1), copy=True)

    def _run_short(self, slab: torch.Tensor, items: list[EngineItem]) -> list[torch.Tensor]:
        """Step-by-step over a batch; returns each item's top-layer outputs [T, H]."""
        lengths = [it.inputs.shape[0] for it in items]
        slots = torch.tensor([it.slot for it in items], device=self.device)
        h = slab.index_select(1, slots)  # [L, B, H], a copy
        # Longest first, so the items still active at timestep t are a prefix.
        order = sorted(range(len(items)), key=lambda i: -lengths[i])
        perm = torch.tensor(order, device=self.device)
        h = h.index_select(1, perm)
        embedded = [self._embed([items[i].inputs]) for i in order]
        top_steps: list[torch.Tensor] = []
        active = len(order)
        for t in range(lengths[order[0]]):
            while lengths[order[active - 1]] <= t:
                active -= 1
            x = torch.stack([embedded[j][t] for j in range(active)])
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
                x = torch.gru_cell(x, h[k, :active], w_ih, w_hh, b_ih, b_hh)
                h[k, :active] = x
            top_steps.append(x)
        slab.index_copy_(1, slots.index_select(0, perm), h)
        tops: list[torch.Tensor] = [torch.empty(0)] * len(items)
        for rank, i in enumerate(order):
            tops[i] = torch.stack([top_steps[t][rank] for t in range(lengths[i])])
        return tops

    def _run_long(self, slab: torch.Tensor, item: EngineItem) -> torch.Tensor:
        """One session's long chunk through nn.GRU (cuDNN on GPU)."""
        h0 = slab[:, item.slot : item.slot + 1].clone()
        out, hn = self.gru(self._embed([item.inputs]).unsqueeze(1), h0)
        slab[:, item.slot : item.slot + 1] = hn
        return out.squeeze(1)

    def _finish(
        self, slab: torch.Tensor, items: list[EngineItem], tops: list[torch.Tensor | None]
    ) -> list[EngineResult]:
        # One head call for every row anybody asked for, then split per item.
        rows: list[torch.Tensor] = []
        for it, top in zip(items, tops):
            assert top is not None
            if it.output_mode is OutputMode.ALL:
                rows.append(top)
            elif it.output_mode is OutputMode.LAST:
                rows.append(top[-1:])
        outputs = self._to_numpy(self._head(torch.cat(rows))) if rows else None
        asked = [i for i, it in enumerate(items) if it.return_state]
        states: dict[int, np.ndarray] = {}
        if asked:
            slots = torch.tensor([items[i].slot for i in asked], device=self.device)
            states = dict(zip(asked, self._host_states(slab.index_select(1, slots))))
        results = []
        offset = 0
        for i, it in enumerate(items):
            item_outputs = None
            if it.output_mode is OutputMode.ALL:
                assert outputs is not None
                item_outputs = outputs[offset : offset + it.inputs.shape[0]]
                offset += it.inputs.shape[0]
            elif it.output_mode is OutputMode.LAST:
                assert outputs is not None
                item_outputs = outputs[offset]
                offset += 1
            results.append(EngineResult(item_outputs, states.get(i)))
        return results

    def _to_numpy(self, value: torch.Tensor, copy: bool = False) -> np.ndarray:
        # Without ``copy`` a CPU tensor already in the wire dtype is shared, not copied.
        return value.to("cpu", self._wire_dtype, copy=copy).contiguous().numpy()
