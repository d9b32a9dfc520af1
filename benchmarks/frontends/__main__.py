"""python -m benchmarks.frontends: the issue-10 figures, side by side in one run.

    python -m benchmarks.frontends                   # about 4 minutes on 2 cores
    python -m benchmarks.frontends --scale quick     # one repeat, shorter cells
    python -m benchmarks.frontends --publish         # and rewrite its section of docs/benchmarks.md

Writes benchmarks/results/frontends-<UTC>.{json,md} (or under --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.frontends import report
from benchmarks.frontends.run import SCALES, run
from benchmarks.servers import REPO

DOC = REPO / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontends", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--repeats", type=int, help="override the scale's repeats")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--publish", action="store_true", help=f"rewrite the section in {DOC}")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(args_list)
    scale = SCALES[args.scale]
    if args.repeats:
        scale.repeats = args.repeats
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / f"frontends-{stamp}-logs"
    info = report.meta(["python", "-m", "benchmarks.frontends", *args_list])

    def say(text: str) -> None:
        print(text, flush=True)

    result = run(scale, log_dir, say, show_progress=not args.no_progress and sys.stderr.isatty())
    data = report.to_json(result, info)
    text = report.markdown(data)
    (args.out / f"frontends-{stamp}.json").write_text(json.dumps(data, indent=2))
    (args.out / f"frontends-{stamp}.md").write_text(text)
    print(text)
    if args.publish:
        report.publish(DOC, text)
    return 1 if data["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
