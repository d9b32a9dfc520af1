"""docs/architecture.md stays a true map: every server module is in it, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service/seqinfer/service"


def test_the_module_map_names_every_module_and_only_real_ones():
    text = (ROOT / "docs/architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+\.py)`", text))
    # Top-level modules, and those of metrics/ (named in its own row).
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.name for p in PACKAGE.glob("metrics/*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "modules missing from docs/architecture.md"
    assert named - modules == set(), "docs/architecture.md names modules that do not exist"
    for package in ("metrics", "models"):
        assert f"`{package}/`" in text
