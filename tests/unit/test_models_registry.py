"""Model repository discovery: layouts, versions, duplicates, broken directories, strict mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.format import write_model_dir
from seqinfer.service.models.registry import find_model, load_models, version_key
from tests.support import make_model


def keys(models: list) -> set[str]:
    return {m.spec.key for m in models}


def test_both_layouts_load_side_by_side(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "alpha" / "1", make_model(name="alpha", version="1"))
    write_model_dir(tmp_path / "alpha" / "2", make_model(name="alpha", version="2", hidden=12))
    write_model_dir(tmp_path / "beta-dir", make_model("tokens", name="beta", version="7"))
    models, errors = load_models(tmp_path, strict=False, include_builtin=False)
    assert errors == []
    assert keys(models) == {"alpha:1", "alpha:2", "beta:7"}
    assert find_model(models, "alpha", "1").spec.hidden_size == 16  # type: ignore[union-attr]
    assert find_model(models, "alpha").spec.version == "2"  # type: ignore[union-attr]
    assert find_model(models, "alpha", "3") is None


def test_builtins_are_always_served(tmp_path: Path) -> None:
    models, errors = load_models(None, strict=False)
    assert errors == []
    assert {"pydoc-chars:1", "bench-gru:1", "bench-gru-large:1"} <= keys(models)


def test_version_directory_supplies_a_missing_version(tmp_path: Path) -> None:
    d = tmp_path / "alpha" / "5"
    write_model_dir(d, make_model(name="alpha"), config_filename="model.yaml")
    text = (d / "model.yaml").read_text().replace("version: '1'\n", "")
    (d / "model.yaml").write_text(text)
    models, errors = load_models(tmp_path, strict=False, include_builtin=False)
    assert errors == [] and keys(models) == {"alpha:5"}


def test_version_directory_contradicting_config_is_an_error(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "alpha" / "5", make_model(name="alpha", version="4"))
    write_model_dir(tmp_path / "gamma" / "1", make_model(name="not-gamma", version="1"))
    models, errors = load_models(tmp_path, strict=False, include_builtin=False)
    assert models == []
    messages = sorted(str(e) for e in errors)
    assert "field version is '4' but the directory says '5'" in messages[0]
    assert "field name is 'not-gamma' but the directory says 'gamma'" in messages[1]


def test_broken_directory_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "good", make_model(name="good"))
    write_model_dir(tmp_path / "bad", make_model(name="bad"))
    weights = tmp_path / "bad" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (tmp_path / "stray").mkdir()
    (tmp_path / "README.md").write_text("plain files at the top are ignored")
    (tmp_path / ".cache").mkdir()  # hidden: ignored
    models, errors = load_models(tmp_path, strict=False)
    assert "good:1" in keys(models) and "pydoc-chars:1" in keys(models)
    assert "bad:1" not in keys(models)
    paths = sorted(e.path for e in errors)
    assert paths == [str(weights), str(tmp_path / "stray")]


def test_strict_raises_the_first_error(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "good", make_model(name="good"))
    (tmp_path / "stray").mkdir()
    with pytest.raises(ModelLoadError, match="stray"):
        load_models(tmp_path, strict=True)


def test_duplicate_name_and_version_is_an_error_naming_both(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "a", make_model(name="same", version="1"))
    write_model_dir(tmp_path / "b", make_model(name="same", version="1", hidden=12))
    write_model_dir(tmp_path / "c", make_model(name="bench-gru", version="1"))
    models, errors = load_models(tmp_path, strict=False)
    assert [m.spec.source for m in models if m.spec.key == "same:1"] == [str(tmp_path / "a")]
    assert any(
        e.path == str(tmp_path / "b") and f"already loaded from {tmp_path / 'a'}" in str(e)
        for e in errors
    )
    # A repository model cannot shadow a built-in one.
    bench = [m for m in models if m.spec.key == "bench-gru:1"]
    assert len(bench) == 1 and bench[0].spec.source == "builtin"
    assert any("already loaded from builtin" in str(e) for e in errors)


def test_missing_repository_is_an_error_not_a_crash(tmp_path: Path) -> None:
    models, errors = load_models(tmp_path / "nope", strict=False)
    assert "bench-gru:1" in keys(models)
    assert len(errors) == 1 and "not a directory" in str(errors[0])


def test_version_order_is_numeric_aware() -> None:
    versions = ["10", "2", "1.10", "1.9", "1", "beta"]
    assert sorted(versions, key=version_key) == ["1", "1.9", "1.10", "2", "10", "beta"]
