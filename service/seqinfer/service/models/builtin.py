"""Models that ship inside the package and need no model repository."""

from __future__ import annotations

import math

import torch
from seqinfer.service.models.spec import InputKind, LoadedModel, ModelSpec, OutputKind

# Served when a request names no model and by `seqinfer serve` with no repository.
DEFAULT_MODEL_NAME = "bench-gru"


def seeded_dense_model(
    name: str, input_size: int, hidden_size: int, num_layers: int, output_size: int, seed: int
) -> LoadedModel:
    """A dense GRU with torch.nn.GRU's default init, drawn from a fixed seed.

    Its weights mean nothing; it exists so that benchmarks and tests have the
    same model on every machine without a file.
    """
    spec = ModelSpec(
        name=name,
        version="1",
        input_kind=InputKind.DENSE,
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        output_kind=OutputKind.VALUES,
        output_size=output_size,
        description=f"seeded random GRU {input_size}->{hidden_size}x{num_layers}->{output_size}",
        source="builtin",
    )
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(hidden_size)
    tensors = {
        name: (torch.rand(shape, generator=generator) * 2 - 1) * bound
        for name, shape in spec.expected_shapes().items()
    }
    return LoadedModel(spec, tensors)


def bench_gru() -> LoadedModel:
    return seeded_dense_model("bench-gru", 64, 256, 2, 64, seed=20261129)


def bench_gru_large() -> LoadedModel:
    return seeded_dense_model("bench-gru-large", 256, 1024, 2, 256, seed=20261130)


def builtin_models() -> list[LoadedModel]:
    return [bench_gru(), bench_gru_large()]
