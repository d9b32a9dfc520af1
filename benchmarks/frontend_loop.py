"""The price of the process split and the front ends' event loop, side by side in one run.

python -m benchmarks.frontend_loop --duration 8 --repeat 3

Three servers on bench-gru: one process (`--frontends 0`); one front end
and the engine (`--frontends 1`) on asyncio's loop; the same on uvloop
(`SEQINFER_FRONTEND_LOOP=uvloop`). Server CPU is summed over every process
of each server. On 2 cores the load generators share the machine, so this
shows the split's price and uvloop's saving per message, not scaling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.side_by_side import LOADS, run, summarise


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontend_loop", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load", choices=list(LOADS), action="append", help="default: streams")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    args = parser.parse_args()
    configurations = {
        "one process": lambda d: ("--frontends", "0"),
        "1 front end, asyncio": lambda d: ("--frontends", "1"),
        "1 front end, uvloop": lambda d: (
            "--frontends", "1", "--config", _loop_config(d, "uvloop"),
        ),
    }  # fmt: skip
    results = run(
        configurations, args.load or ["stream N=256", "stream N=1"], args.duration, args.repeat
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(summarise(results)))


def _loop_config(workdir: str, loop: str) -> str:
    path = Path(workdir, "settings.yaml")
    path.write_text(f"frontend_loop: {loop}\n")
    return str(path)


if __name__ == "__main__":
    main()
