"""Durability write-through against none: the same loads, side by side in one run.

python -m benchmarks.write_through --duration 8 --repeat 3

Four servers, each `seqinfer serve` on bench-gru: `--durability none`,
`--durability write-through` (SQLite, synchronous=FULL: one fsync per
batch), write-through with `--no-sync-commits` (synchronous=NORMAL: no
fsync; survives a crash of the process, not of the machine) and, for the
price of the disk alone, write-through with the store on a tmpfs
(/dev/shm). The loads (client
processes apart from the server) alternate between the servers within each
repeat, so drift on this shared machine hits all alike; the ratios are the
result, the absolute rates are context.

Loads: StreamSteps N=256 ping-pong (each session waits for its reply, so a
batch's commit is on every step's path) and StepMany, 256 sessions per
message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec
from benchmarks.servers import Target, start_seqinfer

LOADS: dict[str, dict[str, Any]] = {
    "stream N=256": {"transport": "stream", "sessions": 256},
    "StepMany x256": {"transport": "many", "sessions": 256, "per_message": 256},
}


def _load(target: Target, load: dict[str, Any], duration: float) -> dict[str, float]:
    spec = LoadSpec(target=target.address, duration=duration, warmup=1.0, **load)
    result = run_load(spec, show_progress=False, label=target.name)
    return {
        "steps_per_s": result.steps_per_s,
        "p50_ms": result.latency.p50_ms,
        "p99_ms": result.latency.p99_ms,
        "errors": float(result.errors),
    }


def run(duration: float, repeat: int, loads: list[str]) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="seqinfer-wt-") as disk,
        tempfile.TemporaryDirectory(prefix="seqinfer-wt-", dir="/dev/shm") as shm,
    ):
        logs = Path(disk, "logs")
        logs.mkdir()
        modes = {
            "none": (),
            "write-through": ("--durability", "write-through", "--state-dir", f"{disk}/state"),
            "write-through, no fsync": (
                "--durability", "write-through", "--state-dir", f"{disk}/nosync",
                "--no-sync-commits",
            ),
            "write-through (tmpfs)": (
                "--durability", "write-through", "--state-dir", f"{shm}/state",
            ),
        }  # fmt: skip
        targets = {
            name: start_seqinfer(logs, args, name=f"mode{n}")
            for n, (name, args) in enumerate(modes.items())
        }
        try:
            for _ in range(repeat):
                for load_name in loads:
                    load = LOADS[load_name]
                    for mode, target in targets.items():
                        runs = results.setdefault(load_name, {}).setdefault(mode, [])
                        runs.append(_load(target, load, duration))
        finally:
            for target in targets.values():
                target.stop()
    return results


def summarise(results: dict[str, Any]) -> list[str]:
    lines = [
        "| load | mode | steps/s (median) | ratio to none | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for load_name, by_mode in results.items():
        base = statistics.median(r["steps_per_s"] for r in by_mode["none"])
        for mode, runs in by_mode.items():
            rate = statistics.median(r["steps_per_s"] for r in runs)
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            errors = int(sum(r["errors"] for r in runs))
            ratios = ", ".join(
                f"{r['steps_per_s'] / b['steps_per_s']:.2f}"
                for r, b in zip(runs, by_mode["none"], strict=True)
            )
            lines.append(
                f"| {load_name} | {mode} | {rate:,.0f} | {rate / base:.2f}x ({ratios}) "
                f"| {p50:.2f} | {p99:.2f} | {errors} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_through", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load", choices=list(LOADS), action="append", help="default: all")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    args = parser.parse_args()
    results = run(args.duration, args.repeat, args.load or list(LOADS))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(summarise(results)))


if __name__ == "__main__":
    main()
