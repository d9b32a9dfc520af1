"""Throughput against the number of front ends, on a machine with the cores to show it.

python -m benchmarks.frontends.scaling --k 1,2,4,8,12,14 --duration 8 --out results.json

For each K: `seqinfer serve --frontends K`; the engine and each front end
pinned to a physical core of their own (one logical CPU per core, from
/sys topology), the load generators pinned to every other CPU, spreading
their channels over the front ends' own ports (the client's round-robin),
single-step loads: StreamSteps ping-pong and StepMany. Efficiency is
throughput / (K x the K = 1 throughput); below 0.8 it is flagged. A K whose
processes do not fit beside at least one load CPU is skipped and said so.
`--no-pin` runs unpinned (for a smoke test on a small machine: the figures
then mean nothing). `benchmarks/scaling.sh` is the one-command wrapper.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.frontends import layout
from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec

EFFICIENCY_FLOOR = 0.8
LOADS: dict[str, dict[str, Any]] = {
    "stream": {"transport": "stream"},
    "many": {"transport": "many", "per_message": 64},
}


def physical_cpus() -> list[int]:
    """One logical CPU per physical core (the lowest of its siblings), in order."""
    chosen: dict[str, int] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings = path.read_text().strip() if path.exists() else str(cpu)
        chosen.setdefault(siblings, cpu)
    return sorted(chosen.values())


def plan(k: int, cpus: list[int], every: set[int]) -> tuple[list[int], list[int]] | None:
    """(server CPUs, load CPUs) for K front ends and the engine, or None if they don't fit."""
    if k + 1 > len(cpus):
        return None
    server = cpus[: k + 1]
    load = sorted(every - set(server))
    return (server, load) if load else None


def _pin(server: layout.Layout, cpus: list[int]) -> None:
    pids = [server.engine_pid, *(pid for pid, _ in server.fronts.values())]
    for pid, cpu in zip(pids, cpus, strict=False):
        if pid is not None:
            os.sched_setaffinity(pid, {cpu})
    os.sched_setaffinity(server.supervisor_pid, set(cpus))


def _measure(server: layout.Layout, load: str, sessions: int, procs: int, duration: float) -> float:
    spec = LoadSpec(
        target=server.target.address,
        sessions=sessions,
        duration=duration,
        warmup=min(2.0, duration / 2),
        client_procs=procs,
        addresses=server.own_addresses(),
        session_prefix=f"scale-{load}-{time.monotonic_ns()}",
        **LOADS[load],
    )
    return run_load(spec, show_progress=False, label=f"{server.name}/{load}").steps_per_s


def run(ks: list[int], duration: float, sessions_per_frontend: int, pin: bool) -> dict[str, Any]:
    every = set(os.sched_getaffinity(0))
    cpus = physical_cpus()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="seqinfer-scaling-") as logs:
        for k in ks:
            placed = plan(k, cpus, every) if pin else (sorted(every), sorted(every))
            if placed is None:
                skipped.append(
                    f"K={k}: {k + 1} server cores + 1 load CPU do not fit in {len(cpus)}"
                )
                continue
            server_cpus, load_cpus = placed
            server = layout.start(Path(logs), k, name=f"k{k}")
            try:
                if pin:
                    _pin(server, server_cpus)
                    os.sched_setaffinity(0, set(load_cpus))  # the load processes inherit it
                for load in LOADS:
                    rate = _measure(
                        server, load, sessions_per_frontend * k, len(load_cpus), duration
                    )
                    rows.append({"k": k, "load": load, "steps_per_s": rate})
            finally:
                os.sched_setaffinity(0, every)
                server.stop()
    base = {r["load"]: r["steps_per_s"] for r in rows if r["k"] == 1}
    for row in rows:
        single = base.get(row["load"])
        row["efficiency"] = row["steps_per_s"] / (row["k"] * single) if single else None
        row["below_floor"] = row["efficiency"] is not None and row["efficiency"] < EFFICIENCY_FLOOR
    return {
        "machine": {
            "cpus": len(every),
            "physical_cores": len(cpus),
            "processor": platform.processor() or platform.machine(),
            "pinned": pin,
        },
        "rows": rows,
        "skipped": skipped,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{m['cpus']} CPUs, {m['physical_cores']} physical cores, {m['processor']}, "
        f"pinned: {m['pinned']}",
        "",
        "| K | load | steps/s | efficiency |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        eff = "n/a" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        flag = " **below 0.8**" if r["below_floor"] else ""
        lines.append(f"| {r['k']} | {r['load']} | {r['steps_per_s']:,.0f} | {eff}{flag} |")
    lines += [f"- skipped {s}" for s in result["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.frontends.scaling", description=__doc__
    )
    parser.add_argument("--k", default="1,2,4,8,12,14", help="front-end counts, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--sessions-per-frontend", type=int, default=128)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (and .md beside it)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    result = run(ks, args.duration, args.sessions_per_frontend, not args.no_pin)
    args.out.write_text(json.dumps(result, indent=2))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
