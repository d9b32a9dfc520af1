"""``python -m benchmarks`` / ``seqinfer bench``: run the harness, write JSON, markdown, PNG.

    python -m benchmarks                     # the full matrix (10-20 minutes)
    python -m benchmarks --plan quick        # a shorter look
    python -m benchmarks --plan smoke        # seconds; what CI runs
    python -m benchmarks --publish           # also rewrite docs/benchmarks.md's tables
    python -m benchmarks --plan quick --baseline-ref HEAD~3   # regression check, side by side

``--baseline-ref REF`` checks REF out in a temporary git worktree and runs its
``seqinfer serve`` as the server "baseline" beside this tree's, same flags,
interleaved in the load matrix; the report gives "seqinfer vs baseline" per
cell (throughput ratio, p50 difference) and the issue's regression targets.
Every seqinfer (and baseline) cell also splits the server's CPU into engine
µs per item and gRPC front-end µs per message (and per item, for StepMany):
the engine's CPU comes from a probe the harness starts the server with,
exported on its metrics endpoint and read around the cell
(benchmarks/server_metrics.py); the front end is the rest.

Results go to ``benchmarks/results/<UTC timestamp>.{json,md,png}``. The exit
status is non-zero when a server's outputs do not match ``torch.nn.GRU`` or a
part of the run failed; never because of a speed figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import baseline, charts, compare, report
from benchmarks.harness import Harness
from benchmarks.plan import PLANS, Plan
from benchmarks.servers import REPO

DOC = REPO / "docs" / "benchmarks.md"
DOC_IMAGE = REPO / "docs" / "img" / "benchmarks.png"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SKIPPABLE = ("compute", "echo", "handwritten", "seqinfer", "torchserve", "profile", "memory")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plan", choices=sorted(PLANS), default="full")
    p.add_argument("--skip", default="", help=f"comma list of parts to skip: {','.join(SKIPPABLE)}")
    p.add_argument("--sessions", type=_ints, help="N values of the load matrix, e.g. 1,16,256")
    p.add_argument("--transports", help="comma list of stream,unary,many")
    p.add_argument("--duration", type=float, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell")
    p.add_argument("--repeat", type=int, help="run the load matrix this many times")
    p.add_argument("--client-procs", type=int, help="load-generator processes per cell")
    p.add_argument(
        "--idle-sessions", type=_ints, help="idle-session checkpoints, e.g. 10000,100000"
    )
    p.add_argument("--growth-steps", type=int, help="steps of the RSS growth check (0 skips)")
    p.add_argument(
        "--seqinfer-arg",
        action="append",
        default=[],
        help="extra `seqinfer serve` argument (repeat per token), for what-if runs",
    )
    p.add_argument(
        "--seqinfer-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the seqinfer server (repeatable), for what-if runs",
    )
    p.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also run the seqinfer server of this git ref (e.g. HEAD~3) as 'baseline'",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument(
        "--publish",
        action="store_true",
        help=f"also write {DOC_IMAGE.relative_to(REPO)} and the tables in {DOC.relative_to(REPO)}",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="measure nothing: redo the markdown, plot (and --publish) from a results JSON",
    )
    return p


def build_plan(args: argparse.Namespace) -> tuple[Plan, frozenset[str]]:
    plan = PLANS[args.plan]
    changes: dict[str, Any] = {}
    if args.sessions:
        changes["sessions"] = args.sessions
    if args.transports:
        changes["transports"] = tuple(args.transports.split(","))
    for name in ("duration", "warmup", "repeat", "client_procs", "growth_steps"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.idle_sessions is not None:
        changes["idle_checkpoints"] = args.idle_sessions
    if args.seqinfer_arg:
        changes["seqinfer_args"] = tuple(args.seqinfer_arg)
    if args.seqinfer_env:
        pairs = [item.split("=", 1) for item in args.seqinfer_env]
        if any(len(pair) != 2 for pair in pairs):
            raise SystemExit("--seqinfer-env takes KEY=VALUE")
        changes["seqinfer_env"] = dict(pairs)
    if args.baseline_ref:
        try:
            baseline.resolve(REPO, args.baseline_ref)
        except RuntimeError as exc:
            raise SystemExit(
                f"--baseline-ref {args.baseline_ref!r} names no commit: {exc}"
            ) from exc
        changes["baseline_ref"] = args.baseline_ref
    skip = frozenset(s for s in args.skip.split(",") if s)
    unknown = skip - set(SKIPPABLE)
    if unknown:
        raise SystemExit(f"--skip: unknown part(s) {sorted(unknown)}; choose from {SKIPPABLE}")
    return dataclasses.replace(plan, **changes), skip


def publish(markdown_text: str, image: Path | None) -> None:
    """Replace the generated block of docs/benchmarks.md; copy the plot next to it."""
    if image is not None:
        DOC_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, DOC_IMAGE)
    block = (
        f"{BEGIN}\n<!-- generated by `python -m benchmarks --publish`; edits here are lost -->\n\n"
    )
    block += markdown_text + f"\n{END}"
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    DOC.write_text(text)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    args = parser(prog).parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        return _write(results, args.from_json.with_suffix(""), args.publish)
    plan, skip = build_plan(args)
    console = Console(stderr=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work_dir = args.out / "tmp" / stamp
    harness = Harness(
        plan,
        work_dir,
        console,
        show_progress=not args.no_progress and console.is_terminal,
        skip=skip,
    )
    command = " ".join([prog, *(argv if argv is not None else sys.argv[1:])])
    results = harness.run([command])
    results["targets"] = report.targets_dicts(results)
    results["baseline_comparison"] = compare.rows_dicts(results)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / stamp
    base.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return _write(results, base, args.publish)


def _write(results: dict[str, Any], base: Path, publish_docs: bool) -> int:
    """Markdown and plot next to `base`.json; the exit status of the run."""
    text = report.markdown(results)
    image = base.with_suffix(".png")
    plotted = charts.plot(results, image)
    if plotted:
        text += f"\n![benchmarks]({'img/benchmarks.png' if publish_docs else image.name})\n"
    base.with_suffix(".md").write_text(text)
    if publish_docs:
        publish(text, image if plotted else None)
    # Plain stdout, unwrapped, so the markdown can be piped or pasted as is.
    sys.stdout.write(text)
    done = f"results: {base}.json, .md" + (", .png" if plotted else " (no matplotlib)")
    print(done, file=sys.stderr)
    mismatches = [c for c in results["verify"] if not c["ok"]]
    return 1 if mismatches or results["problems"] else 0
