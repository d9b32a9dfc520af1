"""Several `seqinfer serve` configurations under the same loads, alternated in one run.

Settings benchmarks (`benchmarks.frontend_loop`, for one)
each name their configurations and loads; this runs them. Every repeat runs
every load on every configuration in turn, so the drift of this shared
machine hits all alike, and the table's ratios (to the first configuration,
per repeat and their median) are the result; absolute rates are context.
Load generators are separate processes (`benchmarks.loadgen`).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec
from benchmarks.servers import Target, start_seqinfer

# Ping-pong (a step waits for its reply), 256 sessions: the loads.
LOADS: dict[str, dict[str, Any]] = {
    "stream N=256": {"transport": "stream", "sessions": 256},
    "StepMany x256": {"transport": "many", "sessions": 256, "per_message": 256},
    "stream N=1": {"transport": "stream", "sessions": 1},
    "unary N=64": {"transport": "unary", "sessions": 64},
}
Runs = dict[str, dict[str, list[dict[str, float]]]]  # load → configuration → one per repeat


def _load(target: Target, load: Mapping[str, Any], duration: float) -> dict[str, float]:
    spec = LoadSpec(target=target.address, duration=duration, warmup=1.0, **load)
    before = target.cpu()
    result = run_load(spec, show_progress=False, label=target.name)
    cpu = target.cpu() - before
    return {
        "steps_per_s": result.steps_per_s,
        "p50_ms": result.latency.p50_ms,
        "p99_ms": result.latency.p99_ms,
        "errors": float(result.errors),
        # Server CPU (its whole process tree) per step, over the run incl. warmup.
        "cpu_us_per_step": 1e6 * cpu / max(1, result.steps + result.warmup_steps),
    }


def run(
    configurations: Mapping[str, Callable[[str], tuple[str, ...]]],
    loads: list[str],
    duration: float,
    repeat: int,
    roots: Mapping[str, Path] | None = None,
) -> Runs:
    """``configurations``: name → the `serve` flags, given a fresh scratch directory;
    ``roots``: name → the seqinfer tree that serves it (default: this one)."""
    results: Runs = {}
    with tempfile.TemporaryDirectory(prefix="seqinfer-sbs-") as scratch:
        logs = Path(scratch, "logs")
        logs.mkdir()
        targets: dict[str, Target] = {}
        try:
            for n, (name, flags) in enumerate(configurations.items()):
                workdir = Path(scratch, f"c{n}")
                workdir.mkdir()
                root = (roots or {}).get(name)
                target = start_seqinfer(
                    logs, flags(str(workdir)), name=f"config{n}", **({"root": root} if root else {})
                )
                target.tree = True  # with front ends, the server is several processes
                targets[name] = target
            for _ in range(repeat):
                for load_name in loads:
                    for name, target in targets.items():
                        runs = results.setdefault(load_name, {}).setdefault(name, [])
                        runs.append(_load(target, LOADS[load_name], duration))
        finally:
            for target in targets.values():
                target.stop()
    return results


def summarise(results: Runs) -> list[str]:
    lines = [
        "| load | configuration | steps/s (median) | ratio to the first (per repeat) "
        "| p50 ms | p99 ms | server CPU µs/step | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load_name, by_config in results.items():
        first = next(iter(by_config.values()))
        base = statistics.median(r["steps_per_s"] for r in first)
        for name, runs in by_config.items():
            rate = statistics.median(r["steps_per_s"] for r in runs)
            ratios = ", ".join(
                f"{r['steps_per_s'] / b['steps_per_s']:.2f}"
                for r, b in zip(runs, first, strict=True)
            )
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            cpu = statistics.median(r["cpu_us_per_step"] for r in runs)
            errors = int(sum(r["errors"] for r in runs))
            lines.append(
                f"| {load_name} | {name} | {rate:,.0f} | {rate / base:.2f}x ({ratios}) "
                f"| {p50:.2f} | {p99:.2f} | {cpu:,.0f} | {errors} |"
            )
    return lines
