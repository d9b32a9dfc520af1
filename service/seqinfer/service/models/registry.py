"""Which models a server serves: the built-in ones plus a model repository.

A model repository is a directory of model directories, in either layout
(both may be mixed in one repository)::

    repo/
      my-model/            <name>/<version>/: several versions side by side;
        1/model.yaml       the config's name must equal <name>, its version
        2/model.yaml       <version> (a config without `version` takes it)
      other/model.json     <dir>/: one model; name and version from its config
        model.safetensors

A first-level directory with a config file is a model; one without is a
folder of versions. Hidden entries (".git", ".cache") and plain files at the
top are ignored. Every broken directory becomes one ModelLoadError and the
rest still load, unless ``strict``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.config import find_config_file
from seqinfer.service.models.format import read_model_dir
from seqinfer.service.models.spec import LoadedModel


def _visible_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


# A model directory with the name and version its place in the repository implies.
Location = tuple[Path, str | None, str | None]


def discover(repository: Path) -> tuple[list[Location], list[ModelLoadError]]:
    """Model directories under ``repository``, each with the name/version its path implies."""
    found: list[Location] = []
    errors: list[ModelLoadError] = []
    if not repository.is_dir():
        return found, [ModelLoadError(str(repository), "model repository is not a directory")]
    for child in _visible_dirs(repository):
        try:
            config = find_config_file(child)
        except ModelLoadError as exc:
            errors.append(exc)
            continue
        if config is not None:
            found.append((child, None, None))
            continue
        versions = _visible_dirs(child)
        if not versions:
            errors.append(
                ModelLoadError(
                    str(child),
                    "neither a model directory (no model.yaml/model.json) "
                    "nor a folder of version directories",
                )
            )
        found.extend((version, child.name, version.name) for version in versions)
    return found, errors


def load_repository(repository: Path) -> tuple[list[LoadedModel], list[ModelLoadError]]:
    """Every loadable model under ``repository`` and one error per broken directory."""
    locations, errors = discover(repository)
    models: list[LoadedModel] = []
    for directory, name, version in locations:
        try:
            models.append(read_model_dir(directory, expect_name=name, expect_version=version))
        except ModelLoadError as exc:
            errors.append(exc)
    return models, errors


def _drop_duplicates(
    models: Iterable[LoadedModel],
) -> tuple[list[LoadedModel], list[ModelLoadError]]:
    """Keep the first model per name+version; later ones become errors naming both sources."""
    kept: dict[str, LoadedModel] = {}
    errors: list[ModelLoadError] = []
    for model in models:
        first = kept.get(model.spec.key)
        if first is not None:
            errors.append(
                ModelLoadError(
                    model.spec.source or model.spec.key,
                    f"duplicate model {model.spec.key}: already loaded from "
                    f"{first.spec.source or 'builtin'}",
                )
            )
            continue
        kept[model.spec.key] = model
    return list(kept.values()), errors


def load_models(
    repository: Path | None, strict: bool, *, include_builtin: bool = True
) -> tuple[list[LoadedModel], list[ModelLoadError]]:
    """The built-in models plus every model directory under ``repository``.

    Broken directories and duplicate name+version pairs are returned as
    errors while the rest load; with ``strict`` the first error is raised.
    Built-ins come first, so a repository model cannot shadow one.
    """
    from seqinfer.service.models.builtin import builtin_models

    candidates: list[LoadedModel] = builtin_models() if include_builtin else []
    errors: list[ModelLoadError] = []
    if repository is not None:
        loaded, errors = load_repository(Path(repository))
        candidates.extend(loaded)
    models, duplicates = _drop_duplicates(candidates)
    errors.extend(duplicates)
    if strict and errors:
        raise errors[0]
    # Not logged here: the caller (the server) logs each error once.
    return models, errors


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "2" < "10" and "1.9" < "1.10"; numbers before text."""
    parts = re.split(r"[._-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def newest(models: Iterable[LoadedModel], name: str) -> LoadedModel | None:
    """The newest version of ``name`` (by version_key), None if there is none."""
    versions = [m for m in models if m.spec.name == name]
    return max(versions, key=lambda m: version_key(m.spec.version)) if versions else None


def find_model(models: Iterable[LoadedModel], name: str, version: str = "") -> LoadedModel | None:
    """``name`` at ``version``; an empty version means the newest."""
    if not version:
        return newest(models, name)
    return next((m for m in models if m.spec.name == name and m.spec.version == version), None)
