"""benchmarks/scaling.sh needs a many-core machine: it parses, and its Python part runs here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.frontends import scaling

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_scaling_sh_parses_and_runs_the_python_part():
    script = ROOT / "benchmarks" / "scaling.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "benchmarks.frontends.scaling" in text and "1,2,4,8,12,14" in text


def test_the_plan_pins_one_core_per_process_and_skips_what_does_not_fit():
    cpus = list(range(16))
    server, load = scaling.plan(4, cpus, set(cpus))  # type: ignore[misc]
    assert server == [0, 1, 2, 3, 4] and load == list(range(5, 16))
    assert scaling.plan(15, cpus, set(cpus)) is None  # 16 server cores, no load CPU left
    assert scaling.plan(14, cpus, set(cpus)) == (list(range(15)), [15])
    # Hyperthreads: the load may use a server core's sibling, never the core itself.
    assert scaling.plan(1, [0, 1], {0, 1, 2, 3}) == ([0, 1], [2, 3])


def test_a_tiny_unpinned_run_reports_efficiency_against_k1(tmp_path: Path):
    out = tmp_path / "scaling.json"
    scaling.main(["--k", "1", "--duration", "1", "--sessions-per-frontend", "2", "--no-pin",
                  "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert [(r["k"], r["load"]) for r in result["rows"]] == [(1, "stream"), (1, "many")]
    assert all(
        r["steps_per_s"] > 0 and r["efficiency"] == pytest.approx(1.0) for r in result["rows"]
    )
    assert "| 1 | stream |" in out.with_suffix(".md").read_text()
