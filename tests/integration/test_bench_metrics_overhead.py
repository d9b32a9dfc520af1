"""The metrics on/off benchmark runs end to end (a tiny round; never asserts speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_overhead_benchmark_reports_a_ratio():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.metrics_overhead",
            "--transport",
            "many",
            "--sessions",
            "8",
            "--rounds",
            "1",
            "--seconds",
            "0.5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"metrics on/off = (\d+\.\d+)", result.stdout)
    assert match and float(match.group(1)) > 0, result.stdout
