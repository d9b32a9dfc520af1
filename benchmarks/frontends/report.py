"""A front-end benchmark run as JSON and as the markdown published in docs/benchmarks.md.

The markdown is what ``--publish`` writes between the section's markers in
docs/benchmarks.md, so the page shows the figures of one run, with the
command and the machine, and no hand-copied numbers.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.frontends.cell import CellResult
from benchmarks.frontends.figures import Figure, figures
from benchmarks.frontends.run import RunResult
from benchmarks.procs import load_average
from benchmarks.servers import REPO

BEGIN = "<!-- frontends:begin -->"
END = "<!-- frontends:end -->"


def meta(argv: list[str]) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    model = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "command": " ".join(argv),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "commit": commit,
        "load_before": load_average(),
    }


def to_json(run: RunResult, info: dict[str, Any]) -> dict[str, Any]:
    found = figures(run.repeats, run.saturation)
    return {
        "meta": {**info, "seconds": run.seconds, "load_after": load_average()},
        "scale": run.scale,
        "figures": [f.to_dict() for f in found],
        "repeats": [{k: c.to_dict() for k, c in r.items()} for r in run.repeats],
        "saturation": run.saturation.to_dict() if run.saturation else None,
        "problems": run.problems,
    }


def _value(f: Figure) -> str:
    if math.isinf(f.value):
        return "inf"
    if f.name.endswith("(ms)"):
        return f"{f.value:+.3f} ms"
    return f"{f.value:.3f}" if f.value < 0.1 else f"{f.value:.2f}x"


def _mark(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**missed**")


def _range(f: Figure) -> str:
    finite = [v for v in f.values if not math.isinf(v)]
    if len(f.values) < 2 or not finite:
        return ""
    return f"{min(finite):.3g} to {max(finite):.3g} ({len(f.values)})"


def _median_cells(results: dict[str, Any]) -> list[CellResult]:
    by_key: dict[str, list[CellResult]] = {}
    for repeat in results["repeats"]:
        for key, cell in repeat.items():
            by_key.setdefault(key, []).append(CellResult.from_dict(cell))
    chosen = []
    for cells in by_key.values():
        cells.sort(key=lambda c: c.steps_per_s)
        chosen.append(cells[(len(cells) - 1) // 2])
    return chosen


def markdown(results: dict[str, Any]) -> str:
    split = (("engine", "item"), ("frontend", "message"), ("supervisor", "item"))
    m = results["meta"]
    load = ", ".join(f"{x:.2f}" for x in m["load_before"])
    after = ", ".join(f"{x:.2f}" for x in m["load_after"])
    lines = [
        f"Run of `{m['command']}` at {m['started']} (commit {m['commit']}, "
        f"{m['seconds']:.0f} s): {m['cpus']} x {m['cpu_model']}, Python {m['python']}. "
        f"Load average (1/5/15 min) before: {load}; after: {after}.",
        "",
        "| target | measured | range of repeats | required | | detail |",
        "|---|---:|---:|---|---|---|",
    ]
    for f in (Figure(**d) for d in results["figures"]):
        lines.append(
            f"| {f.name} | {_value(f)} | {_range(f)} | {f.required} | {_mark(f.met)} | {f.detail} |"
        )
    lines += [
        "",
        "| cell (median repeat) | steps/s | p50 ms | p99 ms | errors | server µs/step | "
        "engine µs/item | front ends µs/message | supervisor µs/step | client cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in _median_cells(results):
        # The single process has no roles to split its CPU by.
        roles = [f"{c.us_per(r, u):.1f}" for r, u in split] if c.frontends else ["", "", ""]
        # The load generator's CPU is that of the measured phase only.
        cores = c.client_cpu_s / results["scale"]["duration"]
        lines.append(
            f"| {c.key} | {c.steps_per_s:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.errors} | "
            f"{c.us_per('server', 'item'):.0f} | {' | '.join(roles)} | {cores:.2f} |"
        )
    if results["problems"]:
        lines += ["", "Problems: " + "; ".join(results["problems"])]
    return "\n".join(lines) + "\n"


def publish(doc: Path, text: str) -> None:
    """Replace what stands between the section's markers in ``doc`` with ``text``."""
    page = doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise ValueError(f"{doc} has no {BEGIN} ... {END} markers")
    note = "<!-- generated by `python -m benchmarks.frontends --publish` -->"
    block = f"{BEGIN}\n{note}\n\n{text}\n{END}"
    doc.write_text(pattern.sub(lambda _: block, page))
