"""Reading and writing model directories: a config file plus safetensors weights.

Loading never unpickles: weights are read only by ``safetensors``, and a file
that looks like a pickle or a ``torch.save`` zip is refused with a pointer to
``seqinfer model import``. Every error is a ModelLoadError whose path is the
file at fault and whose message names the field or tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.config import (
    CharTokenizer,
    DenseInput,
    GruConfig,
    LinearHead,
    ModelConfig,
    NoHead,
    TokensInput,
    config_to_data,
    find_config_file,
    parse_config,
    read_config,
)
from seqinfer.service.models.spec import InputKind, LoadedModel, ModelSpec, OutputKind

# safetensors: 8-byte little-endian header length, then a JSON header.
_HEADER_LEN_BYTES = 8
# torch.save writes a zip archive; pickle protocol 2+ starts with PROTO (0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


def spec_from_config(config: ModelConfig, source: str = "") -> ModelSpec:
    """The ModelSpec the engine serves for a validated config."""
    if isinstance(config.input, TokensInput):
        input_kind, input_size, embedding_dim = (
            InputKind.TOKENS,
            config.input.vocab_size,
            config.input.embedding_dim,
        )
    else:
        input_kind, input_size, embedding_dim = InputKind.DENSE, config.input.feature_size, 0
    output_size = (
        config.head.out_features if isinstance(config.head, LinearHead) else config.gru.hidden_size
    )
    return ModelSpec(
        name=config.name,
        version=config.version,
        input_kind=input_kind,
        input_size=input_size,
        hidden_size=config.gru.hidden_size,
        num_layers=config.gru.num_layers,
        output_kind=OutputKind(config.output_kind),
        output_size=output_size,
        embedding_dim=embedding_dim,
        dtype=config.dtype,
        description=config.description,
        tokenizer=config.tokenizer,
        source=source,
    )


def config_from_spec(spec: ModelSpec, weights: str | None = None) -> ModelConfig:
    """The config that describes ``spec`` (the inverse of spec_from_config)."""
    model_input: TokensInput | DenseInput
    if spec.input_kind is InputKind.TOKENS:
        model_input = TokensInput(
            kind="tokens", vocab_size=spec.input_size, embedding_dim=spec.embedding_dim
        )
    else:
        model_input = DenseInput(kind="dense", feature_size=spec.input_size)
    head: LinearHead | NoHead = (
        LinearHead(kind="linear", out_features=spec.output_size)
        if spec.has_head
        else NoHead(kind="none")
    )
    fields: dict[str, object] = {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "input": model_input,
        "gru": GruConfig(hidden_size=spec.hidden_size, num_layers=spec.num_layers),
        "head": head,
        "output_kind": spec.output_kind.value,
        "dtype": spec.dtype,
        "tokenizer": spec.tokenizer,
    }
    if weights is not None:
        fields["weights"] = weights
    return ModelConfig.model_validate(fields)


def _sniff(path: Path, size: int) -> None:
    """Refuse files that are clearly not safetensors, saying what they look like.

    safetensors would reject them too, but with "header too large", which
    does not tell a user that they handed over a pickled checkpoint. Only a
    file whose header is unusable is diagnosed, so a valid file whose length
    bytes happen to look like a magic number is never refused.
    """
    with path.open("rb") as f:
        head = f.read(_HEADER_LEN_BYTES + 1)
    if len(head) > _HEADER_LEN_BYTES:
        (header_len,) = struct.unpack("<Q", head[:_HEADER_LEN_BYTES])
        if head[_HEADER_LEN_BYTES:] == b"{" and _HEADER_LEN_BYTES + header_len <= size:
            return
    if head.startswith(_ZIP_MAGIC) or (len(head) > 1 and head[0] == _PICKLE_PROTO and head[1] <= 5):
        raise ModelLoadError(
            str(path),
            "this is a pickled PyTorch checkpoint (torch.save), not safetensors; it is never "
            "unpickled here. Convert it with `seqinfer model import`",
        )
    if len(head) <= _HEADER_LEN_BYTES:
        raise ModelLoadError(str(path), f"truncated safetensors file: {size} bytes, no header")
    if head[_HEADER_LEN_BYTES:] != b"{":
        raise ModelLoadError(str(path), "not a safetensors file (no JSON header)")
    raise ModelLoadError(
        str(path),
        f"truncated safetensors file: header says {header_len} bytes of metadata, "
        f"file has {size} bytes in all",
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, with errors that name the file and the problem."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelLoadError(str(path), f"cannot read weights: {exc.strerror}") from None
    _sniff(path, size)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        message = str(exc)
        if "not fully covered" in message or "incomplete" in message:
            message = f"truncated or corrupt safetensors file ({message})"
        raise ModelLoadError(str(path), message) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(path), f"cannot read weights: {exc}") from None
    return tensors


def read_model_dir(
    directory: Path, *, expect_name: str | None = None, expect_version: str | None = None
) -> LoadedModel:
    """Load one model directory, checking weights against the config.

    ``expect_name`` / ``expect_version`` come from a ``<name>/<version>/``
    repository layout: the config must agree with the directory names, and a
    config without a ``version`` field takes the directory's.
    """
    if not directory.is_dir():
        raise ModelLoadError(str(directory), "not a directory")
    config_path = find_config_file(directory)
    if config_path is None:
        raise ModelLoadError(
            str(directory), "no config file (expected one of model.yaml, model.yml, model.json)"
        )
    config = read_config(config_path)
    if expect_name is not None and config.name != expect_name:
        raise ModelLoadError(
            str(config_path),
            f"field name is {config.name!r} but the directory says {expect_name!r}",
        )
    if expect_version is not None and config.version != expect_version:
        if "version" in config.model_fields_set:
            raise ModelLoadError(
                str(config_path),
                f"field version is {config.version!r} but the directory says {expect_version!r}",
            )
        # Re-validated, since a directory name need not be a valid version label.
        data = {**config_to_data(config), "version": expect_version}
        config = parse_config(data, f"{config_path} (version from directory name)")
    weights_path = directory / config.weights
    if not weights_path.is_file():
        raise ModelLoadError(
            str(weights_path),
            f"weights file named by field 'weights' in {config_path.name} is missing",
        )
    tensors = read_weights(weights_path)
    spec = spec_from_config(config, source=str(directory))
    try:
        return LoadedModel(spec, tensors)
    except ModelLoadError as exc:
        # The spec validation names the tensor; say which files disagree.
        detail = str(exc).removeprefix(f"{exc.path}: ")
        raise ModelLoadError(
            str(weights_path), f"{detail} (weights do not match {config_path.name})"
        ) from None


def write_model_dir(
    directory: Path,
    model: LoadedModel,
    *,
    config_filename: str = "model.json",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as a model directory (created if needed); returns the config path.

    Only the canonical tensors are written, in the spec's dtype, so a
    written directory always reloads to the same model.
    """
    if config_filename not in {"model.json", "model.yaml", "model.yml"}:
        raise ValueError(f"config_filename must be model.json or model.yaml, not {config_filename}")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in {"model.json", "model.yaml", "model.yml"} - {config_filename}:
        (directory / stale).unlink(missing_ok=True)
    config = config_from_spec(model.spec)
    tensors = {
        name: model.tensors[name].detach().to(model.spec.torch_dtype).contiguous().cpu()
        for name in model.spec.expected_shapes()
    }
    weights_path = directory / config.weights
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    # safetensors creates the file owner-only; a model directory is meant to
    # be read by a server running as another user, like the config beside it.
    weights_path.chmod(0o644)
    data = config_to_data(config)
    config_path = directory / config_filename
    if config_filename == "model.json":
        config_path.write_text(json.dumps(data, indent=2, ensure_ascii=True) + "\n")
    else:
        import yaml

        config_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=False))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)
    return config_path


__all__ = [
    "CharTokenizer",
    "config_from_spec",
    "read_config",
    "read_model_dir",
    "read_weights",
    "spec_from_config",
    "write_model_dir",
]
