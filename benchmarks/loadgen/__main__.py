"""Run one load against a running server and print the result as JSON.

python -m benchmarks.loadgen --target 127.0.0.1:50051 --transport stream -n 64 --duration 5
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import TRANSPORTS, LoadSpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port (loopback only)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="stream")
    parser.add_argument("--mode", choices=("pingpong", "pipelined"), default="pingpong")
    parser.add_argument("-n", "--sessions", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--per-message", type=int, default=256)
    parser.add_argument("--model", default="bench-gru")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--output-size", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=0, help="steps per session (0: use --duration)"
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        target=args.target,
        transport=args.transport,
        mode=args.mode,
        sessions=args.sessions,
        depth=args.depth,
        per_message=args.per_message,
        model=args.model,
        input_size=args.input_size,
        output_size=args.output_size,
        steps=args.steps,
        duration=args.duration,
        warmup=args.warmup,
        client_procs=args.client_procs,
        channels=args.channels,
        ts_model=args.model,
    )
    result = run_load(spec, show_progress=not args.no_progress and sys.stderr.isatty())
    data = result.to_dict()
    data["latency"].pop("hist_edges_ms")
    data["latency"].pop("hist_counts")
    json.dump(data, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
