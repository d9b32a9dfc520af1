"""The write-through benchmark runs end to end (a tiny round; never asserts speed).

What it does assert is what the figures rest on: the write-through servers
really committed (commits counted by the store) and grouped the sessions of
a StepMany message into commits of more than one session.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_write_through_benchmark_reports_ratios_and_group_commits():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.write_through",
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
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for mode in ("write-through", "write-through-normal"):
        ratio = re.search(rf"{mode}/none = (\d+\.\d+)", result.stdout)
        assert ratio and float(ratio.group(1)) > 0, result.stdout
        commits = re.search(
            rf"round 0 {mode}: [\d,]+ steps/s, (\d+) commits of (\d+\.\d)", result.stdout
        )
        assert commits, result.stdout
        assert int(commits.group(1)) > 0 and float(commits.group(2)) > 1, result.stdout


def test_write_through_benchmark_on_redis_commits_to_a_real_redis():
    from tests.redis_server import require_redis_server

    require_redis_server()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.write_through",
            "--transport",
            "many",
            "--sessions",
            "8",
            "--rounds",
            "1",
            "--seconds",
            "0.5",
            "--store",
            "redis",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    ratio = re.search(r"write-through on redis/none = (\d+\.\d+)", result.stdout)
    assert ratio and float(ratio.group(1)) > 0, result.stdout
    commits = re.search(
        r"round 0 write-through: [\d,]+ steps/s, (\d+) commits of (\d+\.\d)", result.stdout
    )
    assert commits and int(commits.group(1)) > 0 and float(commits.group(2)) > 1, result.stdout
    assert "write-through-normal" not in result.stdout, "a SQLite pragma: not run on Redis"
