"""Model directory format: config validation, round trip, and every broken-file case."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.config import DTYPE_NAMES, read_config
from seqinfer.service.models.format import read_model_dir, read_weights, write_model_dir
from seqinfer.service.models.spec import DTYPES, InputKind, OutputKind
from tests.support import make_model

GOOD_YAML = """\
name: tiny
version: 3
description: a test model
input: {kind: tokens, vocab_size: 11, embedding_dim: 4}
gru: {hidden_size: 8, num_layers: 2}
head: {kind: linear, out_features: 11}
output_kind: logits
"""


def tensors_for(hidden: int = 8, layers: int = 2, vocab: int = 11, emb: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    t = {"embedding.weight": torch.randn(vocab, emb, generator=g)}
    for k in range(layers):
        in_k = emb if k == 0 else hidden
        t[f"gru.weight_ih_l{k}"] = torch.randn(3 * hidden, in_k, generator=g)
        t[f"gru.weight_hh_l{k}"] = torch.randn(3 * hidden, hidden, generator=g)
        t[f"gru.bias_ih_l{k}"] = torch.randn(3 * hidden, generator=g)
        t[f"gru.bias_hh_l{k}"] = torch.randn(3 * hidden, generator=g)
    t["head.weight"] = torch.randn(vocab, hidden, generator=g)
    t["head.bias"] = torch.randn(vocab, generator=g)
    return t


def model_dir(tmp_path: Path, config: str = GOOD_YAML, tensors: dict | None = None) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.yaml").write_text(config)
    save_file(tensors if tensors is not None else tensors_for(), str(d / "model.safetensors"))
    return d


def load_error(directory: Path) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        read_model_dir(directory)
    return info.value


def test_good_directory_loads_with_config_values(tmp_path: Path) -> None:
    model = read_model_dir(model_dir(tmp_path))
    spec = model.spec
    assert (spec.name, spec.version) == ("tiny", "3")  # YAML int version becomes a label
    assert spec.input_kind is InputKind.TOKENS and spec.input_size == 11
    assert spec.embedding_dim == 4 and spec.hidden_size == 8 and spec.num_layers == 2
    assert spec.output_kind is OutputKind.LOGITS and spec.out_features == 11
    assert spec.description == "a test model"
    assert torch.equal(model.tensors["head.bias"], tensors_for()["head.bias"])


@pytest.mark.parametrize("config_filename", ["model.json", "model.yaml"])
def test_write_then_read_round_trips(tmp_path: Path, config_filename: str) -> None:
    original = make_model("tokens", output_kind="probabilities", name="rt", version="2.1")
    write_model_dir(tmp_path / "rt", original, config_filename=config_filename)
    loaded = read_model_dir(tmp_path / "rt")
    assert loaded.spec == dataclasses.replace(original.spec, source=str(tmp_path / "rt"))
    for name, tensor in original.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name


def test_dense_model_without_head_round_trips(tmp_path: Path) -> None:
    original = make_model("dense", output_kind="hidden")
    write_model_dir(tmp_path / "d", original)
    loaded = read_model_dir(tmp_path / "d")
    assert loaded.spec.input_kind is InputKind.DENSE and not loaded.spec.has_head
    assert "head.weight" not in loaded.tensors


def test_absent_biases_load_as_zeros(tmp_path: Path) -> None:
    tensors = {k: v for k, v in tensors_for().items() if "bias" not in k}
    model = read_model_dir(model_dir(tmp_path, tensors=tensors))
    assert torch.count_nonzero(model.tensors["gru.bias_hh_l1"]) == 0


def test_config_dtypes_match_torch_table() -> None:
    assert set(DTYPE_NAMES) == set(DTYPES)


# ------------------------------------------------------------ broken weights --


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1, -100])
def test_truncated_safetensors_is_refused_naming_the_file(tmp_path: Path, keep: int) -> None:
    d = model_dir(tmp_path)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep])
    error = load_error(d)
    assert error.path == str(weights)
    assert "truncated" in str(error) or "safetensors" in str(error)


def test_torch_save_pickle_given_as_safetensors_is_refused_unread(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    torch.save(tensors_for(), d / "model.safetensors")
    error = load_error(d)
    assert error.path == str(d / "model.safetensors")
    assert "pickled PyTorch checkpoint" in str(error) and "seqinfer model import" in str(error)


class Boom:
    """Unpickling this would run code; the loader must never get that far."""

    def __reduce__(self) -> tuple:
        return (pytest.fail, ("the weights file was unpickled",))


def test_raw_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.safetensors").write_bytes(pickle.dumps({"x": Boom()}, protocol=4))
    error = load_error(d)
    assert "pickled" in str(error)


def test_garbage_weights_file_is_refused(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "not a safetensors file" in str(load_error(d))


def test_wrong_shape_names_the_tensor(tmp_path: Path) -> None:
    tensors = tensors_for()
    tensors["gru.weight_hh_l1"] = torch.zeros(24, 7)
    error = load_error(model_dir(tmp_path, tensors=tensors))
    assert "gru.weight_hh_l1" in str(error) and "[24, 7]" in str(error) and "[24, 8]" in str(error)
    assert error.path.endswith("model.safetensors")


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    tensors = tensors_for()
    del tensors["gru.weight_ih_l1"]
    assert "missing tensor gru.weight_ih_l1" in str(
        load_error(model_dir(tmp_path, tensors=tensors))
    )


def test_unknown_tensor_is_named(tmp_path: Path) -> None:
    tensors = tensors_for()
    tensors["layer_norm.weight"] = torch.ones(8)
    assert "unknown tensor(s): layer_norm.weight" in str(
        load_error(model_dir(tmp_path, tensors=tensors))
    )


def test_config_weights_mismatch_says_so(tmp_path: Path) -> None:
    # Weights of a hidden-16 model under a config that says 8.
    error = load_error(model_dir(tmp_path, tensors=tensors_for(hidden=16)))
    assert "weights do not match model.yaml" in str(error)
    assert "[48, 4]" in str(error)  # what the file has


def test_config_with_three_layers_and_weights_with_two(tmp_path: Path) -> None:
    config = GOOD_YAML.replace("num_layers: 2", "num_layers: 3")
    assert "missing tensor gru.weight_ih_l2" in str(load_error(model_dir(tmp_path, config)))


def test_integer_weights_are_refused(tmp_path: Path) -> None:
    tensors = tensors_for()
    tensors["head.bias"] = torch.zeros(11, dtype=torch.int32)
    assert "not float" in str(load_error(model_dir(tmp_path, tensors=tensors)))


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    tensors = tensors_for()
    tensors["head.weight"][0, 0] = float("nan")
    assert "NaN" in str(load_error(model_dir(tmp_path, tensors=tensors)))


def test_missing_weights_file_names_the_field(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.safetensors").unlink()
    error = load_error(d)
    assert error.path == str(d / "model.safetensors") and "field 'weights'" in str(error)


# ------------------------------------------------------------- broken config --


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("kind: tokens", "kind: audio"), "field input"),
        (("kind: tokens", "kind: audio"), "audio"),
        (("output_kind: logits", "output_kind: scores"), "field output_kind"),
        (("hidden_size: 8", "hidden_size: 0"), "field gru.hidden_size"),
        (("hidden_size: 8", "hidden_size: 8, dropout: 0.1"), "field gru.dropout"),
        (("name: tiny", "name: tiny\ncolour: blue"), "field colour"),
        (("name: tiny", "name: 'has space'"), "field name"),
        (("output_kind: logits", "output_kind: hidden"), "needs head kind 'none'"),
        (("output_kind: logits", "output_kind: logits\ndtype: int8"), "field dtype"),
        (
            ("output_kind: logits", "output_kind: logits\nweights: model.pt"),
            "never loaded",
        ),
        (
            ("output_kind: logits", "output_kind: logits\nweights: ../x.safetensors"),
            "field weights",
        ),
    ],
)
def test_bad_config_names_file_and_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    d = model_dir(tmp_path, GOOD_YAML.replace(*change))
    error = load_error(d)
    assert error.path == str(d / "model.yaml")
    assert expected in str(error)


def test_missing_field_is_named(tmp_path: Path) -> None:
    d = model_dir(tmp_path, GOOD_YAML.replace("gru: {hidden_size: 8, num_layers: 2}\n", ""))
    assert "field gru: Field required" in str(load_error(d))


def test_unparseable_yaml_and_json(tmp_path: Path) -> None:
    d = model_dir(tmp_path, "name: [unclosed\n")
    assert "not valid YAML" in str(load_error(d))
    (d / "model.yaml").unlink()
    (d / "model.json").write_text("{nope")
    assert "not valid JSON" in str(load_error(d))


def test_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping" in str(load_error(model_dir(tmp_path, "- a\n- b\n")))


def test_two_config_files_are_ambiguous(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.json").write_text(json.dumps({"name": "other"}))
    assert "more than one config file" in str(load_error(d))


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no config file" in str(load_error(tmp_path / "empty"))


def test_tokenizer_must_cover_the_vocabulary(tmp_path: Path) -> None:
    config = GOOD_YAML + "tokenizer: {kind: chars, alphabet: abc, unknown_id: 3}\n"
    assert "tokenizer covers 4 ids" in str(load_error(model_dir(tmp_path, config)))


def test_tokenizer_round_trips_text(tmp_path: Path) -> None:
    alphabet = "abcdefghij"
    config = GOOD_YAML + f"tokenizer: {{kind: chars, alphabet: {alphabet}, unknown_id: 10}}\n"
    tokenizer = read_config(model_dir(tmp_path, config) / "model.yaml").tokenizer
    assert tokenizer is not None
    assert tokenizer.encode("bad!") == [1, 0, 3, 10]
    assert tokenizer.decode([1, 0, 3, 10]) == "bad\ufffd"


def test_read_weights_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        read_weights(tmp_path / "nope.safetensors")
