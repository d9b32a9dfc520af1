"""The config file of a model directory, validated by pydantic.

A model directory holds ``model.yaml`` (or ``model.yml`` / ``model.json``)
and a safetensors weights file. The config says what the weights are; the
loader then checks the weights against it. Example::

    name: my-model
    version: "1"
    input: {kind: tokens, vocab_size: 97, embedding_dim: 64}
    gru: {hidden_size: 256, num_layers: 2}
    head: {kind: linear, out_features: 97}
    output_kind: logits
    dtype: float32

Unknown keys are errors (a typo must not silently become a default).
This module does not import torch, so client-side tools (the demo) can read
a config, e.g. its tokenizer, without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from seqinfer.service.errors import ModelLoadError

# Looked up in this order; more than one in a directory is an error.
CONFIG_FILENAMES = ("model.yaml", "model.yml", "model.json")
DEFAULT_WEIGHTS_FILENAME = "model.safetensors"
FORMAT_VERSION: Literal[1] = 1

# Kept as strings so that this module stays torch-free; spec.DTYPES is the
# torch-side table and a unit test checks the two agree.
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
OUTPUT_KINDS = ("logits", "probabilities", "values", "hidden")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokensInput(_Strict):
    """Integer token ids in [0, vocab_size), looked up in an embedding table."""

    kind: Literal["tokens"]
    vocab_size: int = Field(gt=0)
    embedding_dim: int = Field(gt=0)


class DenseInput(_Strict):
    """Float feature vectors fed straight into the first GRU layer."""

    kind: Literal["dense"]
    feature_size: int = Field(gt=0)


class GruConfig(_Strict):
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)


class LinearHead(_Strict):
    kind: Literal["linear"]
    out_features: int = Field(gt=0)


class NoHead(_Strict):
    kind: Literal["none"]


class CharTokenizer(_Strict):
    """Characters to token ids: the i-th character of ``alphabet`` is id i.

    Any other character maps to ``unknown_id``. Stored in the config so that
    a client (the demo) encodes and decodes exactly as the model was trained.
    """

    kind: Literal["chars"]
    alphabet: str = Field(min_length=1)
    unknown_id: int = Field(ge=0)
    # (from, to) replacements applied before lookup (e.g. curly quotes to
    # ASCII ones), as in training, so that such text is not all unknowns.
    # Pairs, not a dict, so that a spec holding this stays hashable.
    normalise: tuple[tuple[str, str], ...] = ()

    @field_validator("alphabet")
    @classmethod
    def _distinct(cls, alphabet: str) -> str:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        return alphabet

    @property
    def vocab_size(self) -> int:
        return max(len(self.alphabet), self.unknown_id + 1)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, after the normalisation table."""
        for old, new in self.normalise:
            text = text.replace(old, new)
        index = {ch: i for i, ch in enumerate(self.alphabet)}
        return [index.get(ch, self.unknown_id) for ch in text]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; the unknown id and ids outside the alphabet become U+FFFD."""
        n = len(self.alphabet)
        return "".join(
            self.alphabet[i] if 0 <= i < n and i != self.unknown_id else "\ufffd" for i in ids
        )


InputConfig = Annotated[TokensInput | DenseInput, Field(discriminator="kind")]
HeadConfig = Annotated[LinearHead | NoHead, Field(discriminator="kind")]


class ModelConfig(_Strict):
    """Everything in a model directory's config file."""

    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(default="1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    input: InputConfig
    gru: GruConfig
    head: HeadConfig
    output_kind: Literal["logits", "probabilities", "values", "hidden"]
    dtype: Literal["float32", "float64", "float16", "bfloat16"] = "float32"
    weights: str = DEFAULT_WEIGHTS_FILENAME
    tokenizer: CharTokenizer | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # YAML reads `version: 1` as an int; a version is a label, not a number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("weights")
    @classmethod
    def _weights_inside_dir(cls, value: str) -> str:
        # The weights must be a file of this directory: no path escapes.
        if "/" in value or "\\" in value or value in {"", ".", ".."}:
            raise ValueError("must be a plain file name inside the model directory")
        if not value.endswith(".safetensors"):
            raise ValueError("must be a .safetensors file (pickled checkpoints are never loaded)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        has_head = isinstance(self.head, LinearHead)
        if self.output_kind == "hidden" and has_head:
            raise ValueError("output_kind 'hidden' needs head kind 'none'")
        if self.output_kind != "hidden" and not has_head:
            raise ValueError(f"output_kind {self.output_kind!r} needs head kind 'linear'")
        if self.tokenizer is not None:
            if not isinstance(self.input, TokensInput):
                raise ValueError("a tokenizer needs input kind 'tokens'")
            if self.tokenizer.vocab_size != self.input.vocab_size:
                raise ValueError(
                    f"tokenizer covers {self.tokenizer.vocab_size} ids, "
                    f"input.vocab_size is {self.input.vocab_size}"
                )
        return self

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"


def find_config_file(directory: Path) -> Path | None:
    """The config file of ``directory``, None if it has none.

    Raises ModelLoadError when it has more than one, because which one wins
    would otherwise be an accident of lookup order.
    """
    found = [directory / n for n in CONFIG_FILENAMES if (directory / n).is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelLoadError(str(directory), f"more than one config file ({names}); keep one")
    return found[0] if found else None


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"field {loc}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: Any, origin: str) -> ModelConfig:
    """Validate already-parsed config data; errors name ``origin`` and the field."""
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ModelLoadError(origin, f"expected a mapping at the top level, got {kind}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelLoadError(origin, format_validation_error(exc)) from None


def read_config(path: Path) -> ModelConfig:
    """Read and validate a config file (YAML or JSON by extension)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(str(path), f"cannot read config: {exc}") from None
    try:
        # yaml.safe_load builds plain data only (no arbitrary objects).
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(str(path), f"not valid {path.suffix[1:].upper()}: {exc}") from None
    return parse_config(data, str(path))


def config_to_data(config: ModelConfig) -> dict[str, Any]:
    """Plain data for writing a config file; defaults kept so the file is self-describing."""
    return config.model_dump(mode="json", exclude_none=True)
