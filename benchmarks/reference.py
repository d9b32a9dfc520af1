"""The built-in bench models as plain ``torch.nn.GRU`` + ``torch.nn.Linear`` modules.

Used three ways: by the hand-written baseline server, by the TorchServe peer
(through a state_dict file, since that venv has no seqinfer), and as the
reference every server's outputs are checked against.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from seqinfer.service.models import builtin
from seqinfer.service.models.spec import LoadedModel

MODELS = {"bench-gru": builtin.bench_gru, "bench-gru-large": builtin.bench_gru_large}


class GruWithHead(nn.Module):
    """nn.GRU (sequence-first) followed by a linear head on every timestep."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, output_size: int
    ) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, B, input], h: [layers, B, hidden] -> (outputs [T, B, out], new h)."""
        seq, h_new = self.gru(x, h)
        return self.head(seq), h_new


def from_loaded(model: LoadedModel) -> GruWithHead:
    """A GruWithHead holding exactly `model`'s weights (names map one to one)."""
    spec = model.spec
    module = GruWithHead(spec.input_size, spec.hidden_size, spec.num_layers, spec.output_size)
    module.load_state_dict(model.tensors, strict=True)
    return module.eval()


@functools.cache
def reference_model(name: str) -> GruWithHead:
    """The named built-in bench model as nn modules (built once per process)."""
    return from_loaded(MODELS[name]())


def export_state_dict(name: str, path: Path) -> None:
    """Save the named model's state_dict plus its shape, for servers without seqinfer."""
    model = MODELS[name]()
    spec = model.spec
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": {
                "input_size": spec.input_size,
                "hidden_size": spec.hidden_size,
                "num_layers": spec.num_layers,
                "output_size": spec.output_size,
            },
            "state_dict": dict(model.tensors),
        },
        path,
    )


@torch.inference_mode()
def reference_outputs(name: str, inputs: torch.Tensor) -> torch.Tensor:
    """Outputs of every timestep for one session's inputs [T, input] from a zero state."""
    module = reference_model(name)
    h0 = torch.zeros(module.gru.num_layers, 1, module.gru.hidden_size)
    outputs, _ = module(inputs.unsqueeze(1), h0)
    return outputs.squeeze(1)
