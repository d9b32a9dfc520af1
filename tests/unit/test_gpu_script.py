"""The GPU device script cannot run on CI: it parses, and its Python parts run on the CPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu import engine_bench, precision, server_load
from seqinfer.service.models.builtin import bench_gru

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_run_sh_parses_and_names_every_part():
    script = ROOT / "benchmarks" / "gpu" / "run.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for module in (
        "benchmarks.gpu.precision",
        "benchmarks.gpu.engine_bench",
        "benchmarks.gpu.server_load",
    ):
        assert module in text
    assert "SEQINFER_TEST_DEVICE=cuda" in text and "tests/integration/test_equivalence.py" in text


def test_engine_parts_run_on_cpu():
    rows = engine_bench.sweep("cpu", ["bench-gru"], (1, 3), min_seconds=0.0, peak=1e12)
    assert [(r["batch"], r["graphs"]) for r in rows] == [(1, False), (3, False)] * 2
    assert all(r["steps_per_s"] > 0 and r["capture_s"] == 0.0 for r in rows)
    rows = engine_bench.resident("cpu", [300, 3000], batch=4, min_seconds=0.0)
    assert [r["resident"] for r in rows] == [300, 3000]
    assert rows[1]["slab_bytes"] == 3000 * 2 * 256 * 4


def test_step_flops_counts_the_layers_and_the_head():
    # bench-gru: 64 in, 256 hidden, 2 layers, 64 out.
    per_row = 2 * 3 * 256 * (64 + 256) + 2 * 3 * 256 * (256 + 256) + 2 * 256 * 64
    assert engine_bench.step_flops(bench_gru(), 10) == 10 * per_row


def test_precision_drift_runs_and_float32_does_not_drift():
    rows = precision.drift(bench_gru(), "float32", steps=10, batch=2)
    assert [r["step"] for r in rows] == [1, 10]
    assert all(r["state_err"] == 0.0 for r in rows)
    half = precision.drift(bench_gru(), "bfloat16", steps=10, batch=2)
    assert 0 < half[-1]["state_err"] < 0.05


def test_server_load_parses_its_arguments():
    with pytest.raises(SystemExit) as exit_info:
        server_load.main(["--help"])
    assert exit_info.value.code == 0
