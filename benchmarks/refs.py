"""Several commits' `seqinfer serve`, same flags, under the same loads, alternated in one run.

python -m benchmarks.refs ab9ebd1 35a64c7 HEAD --repeat 3 --duration 3

A regression bisect: `--baseline-ref` compares this tree with one commit;
this puts any number of commits side by side (each checked out in a
temporary worktree, as `benchmarks.baseline` does), so the commit that
moved a figure shows as a step in one table of ratios to the first ref.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from benchmarks import baseline
from benchmarks.side_by_side import LOADS, run, summarise

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LOADS = ["stream N=256", "stream N=1", "unary N=64"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refs", description=__doc__)
    parser.add_argument("refs", nargs="+", help="git refs; ratios are to the first")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load", choices=list(LOADS), action="append")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        trees = {
            ref: stack.enter_context(baseline.checkout(REPO, ref, sys.executable)).path
            for ref in args.refs
        }
        configurations = {ref: (lambda d: ()) for ref in trees}
        results = run(configurations, args.load or DEFAULT_LOADS, args.duration, args.repeat, trees)
    print("\n".join(summarise(results)))


if __name__ == "__main__":
    main()
