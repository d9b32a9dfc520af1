"""TorchServe handler: the bench-gru model with per-sequence GRU state.

Runs inside TorchServe's Python worker (this folder's venv: torch, numpy, no
seqinfer). TorchServe's sequence batching hands the worker a batch holding at
most one request of each sequence; the handler gathers those sequences'
states, runs one ``nn.GRU`` step for the whole batch, and keeps each new
state in an LRU keyed by ``context.get_sequence_id(i)`` — TorchServe's own
stateful example, with the step batched.

Request inputs (the ``input`` map of ``PredictionsRequest``):
    data   raw float32 little-endian bytes, one timestep [input_size]
    start  present on a sequence's first request: start from a zero state
    end    present on its last request: forget the state afterwards
(``StreamPredictions2`` flags every request as sequence end and never sets the
start flag, so these travel as inputs.) Replies are raw float32 bytes of the
output, or b"ERR " + a message: per-item error codes are dropped by
``StreamPredictions2``, so errors travel in the body.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn


class GruWithHead(nn.Module):
    """nn.GRU (sequence-first) then a linear head, as the seqinfer bench models."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, output_size: int):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq, h_new = self.gru(x, h)
        return self.head(seq), h_new


class GruSequenceHandler:
    """Per-sequence GRU state in an LRU; one batched step per TorchServe batch."""

    def __init__(self) -> None:
        self.model: GruWithHead | None = None
        self.states: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_sequences = 4096
        self.input_size = 0
        self.num_layers = 0
        self.hidden_size = 0

    def initialize(self, context: Any) -> None:
        config = (context.model_yaml_config or {}).get("handler", {}) or {}
        torch.set_num_threads(int(config.get("torch_threads", 1)))
        self.max_sequences = int(config.get("max_sequences", 4096))
        model_dir = context.system_properties.get("model_dir")
        checkpoint = torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True)
        shape = checkpoint["config"]
        self.model = GruWithHead(
            shape["input_size"], shape["hidden_size"], shape["num_layers"], shape["output_size"]
        )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()
        self.input_size = shape["input_size"]
        self.num_layers = shape["num_layers"]
        self.hidden_size = shape["hidden_size"]

    def _state(self, sequence_id: str, start: bool) -> torch.Tensor | None:
        if start:
            return torch.zeros(self.num_layers, self.hidden_size)
        state = self.states.get(sequence_id)
        if state is not None:
            self.states.move_to_end(sequence_id)
        return state

    @torch.inference_mode()
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        assert self.model is not None, "initialize() was not called"
        replies: list[bytes] = [b""] * len(data)
        rows: list[int] = []
        ids: list[str] = []
        inputs: list[bytes] = []
        states: list[torch.Tensor] = []
        for i, row in enumerate(data):
            sequence_id = context.get_sequence_id(i)
            raw = row.get("data")
            if raw is None or len(raw) != 4 * self.input_size:
                replies[i] = f"ERR data must be {4 * self.input_size} bytes".encode()
                continue
            state = self._state(sequence_id, start="start" in row)
            if state is None:
                replies[i] = f"ERR unknown sequence {sequence_id} (send start)".encode()
                continue
            rows.append(i)
            ids.append(sequence_id)
            inputs.append(bytes(raw))
            states.append(state)
        if rows:
            # bytearray: a writable buffer, so torch does not warn about sharing it.
            flat = np.frombuffer(bytearray(b"".join(inputs)), dtype="<f4")
            x = torch.from_numpy(flat.reshape(1, len(rows), self.input_size))
            h = torch.stack(states, dim=1)  # [layers, batch, hidden]
            out, h_new = self.model(x, h)
            out_bytes = out[0].numpy()
            for j, (i, sequence_id) in enumerate(zip(rows, ids, strict=True)):
                replies[i] = out_bytes[j].tobytes()
                if "end" in data[i]:
                    self.states.pop(sequence_id, None)
                else:
                    # A copy, so one sequence's state does not pin the whole batch's tensor.
                    self.states[sequence_id] = h_new[:, j].clone()
            while len(self.states) > self.max_sequences:
                self.states.popitem(last=False)
        return replies


_service = GruSequenceHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """TorchServe's entry point: initialise once, then step each batch."""
    if _service.model is None:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
