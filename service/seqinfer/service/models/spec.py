"""What a served model is: its shape (``ModelSpec``) and its weights (``LoadedModel``).

Weights use the parameter names of ``torch.nn.Embedding`` / ``torch.nn.GRU`` /
``torch.nn.Linear`` under fixed prefixes, so a PyTorch state_dict maps onto
them by renaming only:

    embedding.weight                  [vocab_size, embedding_dim]   (tokens only)
    gru.weight_ih_l{k}                [3*hidden, in_k]
    gru.weight_hh_l{k}                [3*hidden, hidden]
    gru.bias_ih_l{k}, gru.bias_hh_l{k} [3*hidden]                   (optional)
    head.weight                       [output_size, hidden]         (with a head)
    head.bias                         [output_size]                 (optional)

in_0 is embedding_dim for token models and input_size for dense ones; in_k
for k > 0 is hidden_size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.config import CharTokenizer


class InputKind(StrEnum):
    TOKENS = "tokens"
    DENSE = "dense"


class OutputKind(StrEnum):
    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    VALUES = "values"
    HIDDEN = "hidden"


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model; everything the server needs except weights."""

    name: str
    version: str
    input_kind: InputKind
    # Vocabulary size for token models, feature count for dense models.
    input_size: int
    hidden_size: int
    num_layers: int
    output_kind: OutputKind
    # Ignored (equals hidden_size) when output_kind is HIDDEN.
    output_size: int
    # Token models only: width of the embedding rows fed to layer 0.
    embedding_dim: int = 0
    dtype: str = "float32"
    description: str = ""
    # How text maps to token ids, for token models that come with one (the
    # built-in char model); clients such as the demo read it from the config.
    tokenizer: CharTokenizer | None = None
    # Where the model was loaded from (a directory, or "builtin"), for messages.
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def has_head(self) -> bool:
        return self.output_kind is not OutputKind.HIDDEN

    @property
    def gru_input_size(self) -> int:
        return self.embedding_dim if self.input_kind is InputKind.TOKENS else self.input_size

    @property
    def out_features(self) -> int:
        return self.output_size if self.has_head else self.hidden_size

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name this spec requires or allows, with its shape."""
        h = self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.input_kind is InputKind.TOKENS:
            shapes["embedding.weight"] = (self.input_size, self.embedding_dim)
        for k in range(self.num_layers):
            in_k = self.gru_input_size if k == 0 else h
            shapes[f"gru.weight_ih_l{k}"] = (3 * h, in_k)
            shapes[f"gru.weight_hh_l{k}"] = (3 * h, h)
            shapes[f"gru.bias_ih_l{k}"] = (3 * h,)
            shapes[f"gru.bias_hh_l{k}"] = (3 * h,)
        if self.has_head:
            shapes["head.weight"] = (self.output_size, h)
            shapes["head.bias"] = (self.output_size,)
        return shapes

    def check(self, origin: str) -> None:
        """Raise ModelLoadError naming the field when the spec is not servable."""
        positive = {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
        }
        if self.has_head:
            positive["output_size"] = self.output_size
        if self.input_kind is InputKind.TOKENS:
            positive["embedding_dim"] = self.embedding_dim
        for name, value in positive.items():
            if value <= 0:
                raise ModelLoadError(origin, f"{name} must be positive, got {value}")
        if self.dtype not in DTYPES:
            raise ModelLoadError(
                origin, f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}"
            )


OPTIONAL_SUFFIXES = ("bias_ih_l", "bias_hh_l", "head.bias")


@dataclass
class LoadedModel:
    """A spec with its weights, checked against each other."""

    spec: ModelSpec
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate(origin=self.spec.key)

    def validate(self, origin: str) -> None:
        """Raise ModelLoadError naming the tensor on a missing, extra or misshapen one.

        Absent biases become zeros, as ``bias=False`` modules compute.
        """
        self.spec.check(origin)
        expected = self.spec.expected_shapes()
        unknown = sorted(set(self.tensors) - set(expected))
        if unknown:
            raise ModelLoadError(origin, f"unknown tensor(s): {', '.join(unknown)}")
        for name, shape in expected.items():
            tensor = self.tensors.get(name)
            if tensor is None:
                if any(s in name for s in OPTIONAL_SUFFIXES):
                    self.tensors[name] = torch.zeros(shape, dtype=self.spec.torch_dtype)
                    continue
                raise ModelLoadError(origin, f"missing tensor {name} (shape {list(shape)})")
            if tuple(tensor.shape) != shape:
                raise ModelLoadError(
                    origin,
                    f"tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}",
                )
            if not tensor.is_floating_point():
                raise ModelLoadError(origin, f"tensor {name} has dtype {tensor.dtype}, not float")
            if not torch.isfinite(tensor).all():
                raise ModelLoadError(origin, f"tensor {name} contains NaN or Inf")
            self.tensors[name] = tensor.detach().to(self.spec.torch_dtype).contiguous()
