"""The benchmark harness end to end, tiny: it runs and its results are well formed.

Starts the echo, hand-written and seqinfer servers on loopback, drives each
over StreamSteps, unary Step and StepMany for a fraction of a second, checks
the servers' outputs against torch.nn.GRU, and runs the memory code paths.
Speed is never asserted: figures from a few hundred milliseconds on a shared
machine mean nothing, only that they were measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import main

pytestmark = pytest.mark.timeout(180)


def test_smoke_run_is_well_formed(tmp_path: Path) -> None:
    code = main(
        [
            "--plan",
            "smoke",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, "a server's outputs mismatched nn.GRU or a part of the run failed"
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["problems"] == []

    cells = {c["key"]: c for c in results["cells"]}
    for server in ("echo", "handwritten", "seqinfer"):
        for transport in ("stream", "unary", "many"):
            cell = cells[f"{server}/{transport}/bench-gru/N4"]
            result = cell["result"]
            assert result["errors"] == 0, result["error_samples"]
            assert result["steps"] > 0 and result["steps_per_s"] > 0
            latency = result["latency"]
            assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
            assert sum(latency["hist_counts"]) == latency["count"]

    checks = results["verify"]
    assert {(c["server"], c["transport"]) for c in checks} >= {
        (s, t) for s in ("handwritten", "seqinfer") for t in ("stream", "unary", "many", "chunk")
    }
    assert all(c["ok"] for c in checks), checks

    assert [p["batch"] for p in results["compute"]] == [1, 4]
    memory = results["memory"]
    assert memory["idle"]["errors"] == 0 and memory["idle"]["points"][0]["sessions"] == 3000
    assert memory["growth"]["errors"] == 0 and memory["growth"]["steps"] >= 4000

    names = {t["name"] for t in results["targets"]}
    assert any("TorchServe" in n for n in names)  # listed even when not measured
    markdown = json_path.with_suffix(".md").read_text()
    assert "### Targets" in markdown and "seqinfer" in markdown
