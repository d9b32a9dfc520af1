"""What a results file says about its own run: command, plan, machine, versions, commit.

Figures from two runs compare only as far as their machines, loads and
versions do, so every run records these beside its figures; the report's
first line is made of them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import torch

from benchmarks import servers
from benchmarks.plan import Plan
from benchmarks.procs import load_average


def run_meta(argv: list[str], plan: Plan) -> dict[str, Any]:
    """The run's "meta" as it starts; the harness adds how it finished."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=servers.REPO,
    ).stdout.strip()
    return {
        "command": " ".join(argv),
        "plan": asdict(plan),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": load_average(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "commit": commit,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
