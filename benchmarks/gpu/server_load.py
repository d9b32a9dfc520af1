"""The server on the GPU under load generators on the machine's CPU cores.

Starts ``seqinfer serve --device cuda`` (CUDA graphs on), runs the loadgen
over a stream and over StepMany, and samples the server with py-spy (if
installed) during a third run, so the report names where its time goes. One
JSON line per run; the expectation (issue 13) is that the CPU front end, not
the GPU, bounds steps/s.

    python -m benchmarks.gpu.server_load --duration 10 --client-procs 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadResult, LoadSpec
from benchmarks.profiling import Recorder
from benchmarks.servers import start_seqinfer

RUNS = (
    ("stream", "pipelined", 1024),
    ("many", "pingpong", 4096),
)


def _summary(result: LoadResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "part": "server",
        "transport": spec.transport,
        "mode": spec.mode,
        "sessions": spec.sessions,
        "client_procs": spec.client_procs,
        "steps_per_s": result.steps_per_s,
        "p50_ms": result.latency.p50_ms,
        "p99_ms": result.latency.p99_ms,
        "errors": result.errors,
        # Near client_procs CPU-seconds per second: the load generators are the bound.
        "client_cpu_per_s": result.client_cpu_s / result.seconds if result.seconds else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.server_load", description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--profile-seconds", type=float, default=8.0)
    args = p.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="seqinfer-gpu-"))
    target = start_seqinfer(
        log_dir, ("--device", args.device, "--max-batch-size", "4096", "--log-level", "INFO")
    )
    try:
        for transport, mode, sessions in RUNS:
            spec = LoadSpec(
                target=target.address,
                transport=transport,  # type: ignore[arg-type]
                mode=mode,  # type: ignore[arg-type]
                sessions=sessions,
                duration=args.duration,
                warmup=1.0,
                client_procs=max(1, args.client_procs),
                session_prefix=f"gpu-{transport}",
            )
            result = run_load(spec, show_progress=False, label=transport)
            print(json.dumps(_summary(result)), flush=True)
        # The profile run: py-spy samples the server while the stream load runs.
        transport, mode, sessions = RUNS[0]
        recorder = Recorder(target.pid, args.profile_seconds, log_dir / "server.pyspy")
        spec = LoadSpec(
            target=target.address,
            transport=transport,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            sessions=sessions,
            duration=args.profile_seconds,
            client_procs=max(1, args.client_procs),
            session_prefix="gpu-profiled",
        )
        run_load(spec, show_progress=False, label="profiled")
        profile = recorder.finish()
        print(json.dumps({"part": "server-profile", **profile.to_dict()}), flush=True)
    finally:
        target.stop()
        server_log = log_dir / "seqinfer.log"
        if server_log.exists():
            # The capture time of the CUDA graphs is logged at start-up.
            for line in server_log.read_text().splitlines():
                if "CUDA graphs" in line:
                    print(json.dumps({"part": "server-log", "line": line}), flush=True)


if __name__ == "__main__":
    main()
