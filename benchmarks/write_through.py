"""Durability write-through against none: the same loads, side by side in one run.

python -m benchmarks.write_through --duration 8 --repeat 3

Four servers on bench-gru: `--durability none`; `write-through` (SQLite,
synchronous=FULL: one fsync per batch); write-through with
`--no-sync-commits` (synchronous=NORMAL: no fsync, survives a crash of the
process, not of the machine); and, for the price of the disk alone,
write-through with its store on a tmpfs (/dev/shm). StreamSteps N=256
ping-pong puts a batch's commit on every step's path; StepMany carries 256
sessions per message.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.side_by_side import LOADS, run, summarise


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_through", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load", choices=list(LOADS), action="append", help="default: N=256 both")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqinfer-wt-", dir="/dev/shm") as shm:
        configurations = {
            "none": lambda d: (),
            "write-through": lambda d: ("--durability", "write-through", "--state-dir", d),
            "write-through, no fsync": lambda d: (
                "--durability", "write-through", "--state-dir", d, "--no-sync-commits",
            ),
            "write-through (tmpfs)": lambda d: (
                "--durability", "write-through", "--state-dir", f"{shm}/{Path(d).name}",
            ),
        }  # fmt: skip
        loads = args.load or ["stream N=256", "StepMany x256"]
        results = run(configurations, loads, args.duration, args.repeat)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(summarise(results)))


if __name__ == "__main__":
    main()
