"""One run's report: the targets and every table, as one markdown document.

The pieces live where their idea does: the issue's targets in
benchmarks/targets.py, the regression targets and the seqinfer-vs-baseline
table in benchmarks/compare.py, the figures' tables in benchmarks/tables.py
(and the plot in benchmarks/charts.py). This module puts them in the order
the document reads, so the same results always give the same markdown.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from benchmarks import compare, tables
from benchmarks.targets import TargetCheck, issue_targets


def all_targets(results: dict[str, Any]) -> list[TargetCheck]:
    """The issue's targets, then (with --baseline-ref) the regression targets."""
    return issue_targets(results) + compare.targets(results)


def targets_dicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [asdict(t) for t in all_targets(results)]


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown(results: dict[str, Any]) -> str:
    """All tables of one run, as markdown."""
    meta = results["meta"]
    out: list[str] = []
    load_before = ", ".join(f"{x:.2f}" for x in meta.get("load_before", []))
    load_after = ", ".join(f"{x:.2f}" for x in meta.get("load_after", []))
    out += [
        f"Run of `{meta.get('command', '')}` at {meta.get('started', '')} (commit "
        f"{meta.get('commit', '?')}, {meta.get('seconds', 0):.0f} s): {meta.get('cpus')} x "
        f"{meta.get('cpu_model', '')}, Python {meta.get('python')}, torch {meta.get('torch')}, "
        f"grpcio {meta.get('grpcio')}. Load average (1/5/15 min) before: {load_before}; "
        f"after: {load_after}.",
        _what_if(meta.get("plan", {})),
        "### Targets",
        "",
        "| target | measured | required | |",
        "|---|---|---|---|",
    ]
    for check in all_targets(results):
        mark = "" if check.kind == "context" else _mark(check.met)
        out.append(f"| {check.name} | {check.measured} | {check.required} | {mark} |")
    out += [
        "",
        "### Load (client in separate processes, ping-pong: each step waits for its reply)",
        "",
    ]
    out += tables.load_table(results)
    out += compare.markdown(results)
    out += tables.compute_table(results)
    out += tables.torchserve_table(results)
    out += tables.memory_table(results)
    out += tables.verify_table(results)
    out += tables.profile_tables(results)
    if results.get("problems"):
        out += ["", "### Problems during the run", ""]
        out += [f"- {p}" for p in results["problems"]]
    return "\n".join(out) + "\n"


def _what_if(plan: dict[str, Any]) -> str:
    """A line saying the seqinfer server ran with non-default flags or environment."""
    args, env = plan.get("seqinfer_args") or [], plan.get("seqinfer_env") or {}
    if not args and not env:
        return ""
    parts = [f"flags `{' '.join(args)}`"] if args else []
    parts += [f"environment `{' '.join(f'{k}={v}' for k, v in env.items())}`"] if env else []
    return f"\n**What-if run:** seqinfer was started with {' and '.join(parts)}.\n"
