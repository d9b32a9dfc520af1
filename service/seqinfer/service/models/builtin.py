"""Models that ship inside the package and need no model repository.

``pydoc-chars`` is a trained character-level language model stored under
``builtin_data/`` in the model directory format (retrain it with
`seqinfer model train-demo`); the ``bench-gru*`` models are drawn from fixed
seeds at start-up, so they need no file.
"""

from __future__ import annotations

import dataclasses
import math
from importlib.resources import files
from pathlib import Path

import torch

from seqinfer.service.models.spec import InputKind, LoadedModel, ModelSpec, OutputKind

# Served when a request names no model; the one the demo talks to.
DEFAULT_MODEL_NAME = "pydoc-chars"


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


def builtin_model_dir(name: str) -> Path:
    """Where the package keeps built-in model directory ``name``."""
    return Path(str(files("seqinfer.service.models") / "builtin_data" / name))


def pydoc_chars() -> LoadedModel:
    """The trained char model; see docs/models.md for how it was trained."""
    from seqinfer.service.models.format import read_model_dir

    model = read_model_dir(builtin_model_dir("pydoc-chars"))
    # "builtin" rather than a site-packages path, for messages and duplicates.
    model.spec = dataclasses.replace(model.spec, source="builtin")
    return model


def builtin_models() -> list[LoadedModel]:
    return [pydoc_chars(), bench_gru(), bench_gru_large()]
