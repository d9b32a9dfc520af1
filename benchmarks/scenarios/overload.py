"""Overload: three times the sustainable load, and what the server does with it.

The claim (issue 12) is that past what it can compute the server refuses the
excess promptly with RESOURCE_EXHAUSTED instead of queueing it: memory stays
bounded, accepted steps keep a latency near the unloaded one, and no
session's counter disagrees with what its client was told. A timed
assertion in a test cannot show that on a shared machine, so this is a
benchmark that reports the figures (docs/reliability.md).

    python -m benchmarks.scenarios.overload [--duration 30] [--json out.json]

Phases, against one fresh ``seqinfer serve`` (bench-gru) on loopback:
unloaded p99 of StreamSteps (benchmarks.loadgen, a few sessions) and of
unary Step (light open loop); sustainable unary throughput (closed loop);
then an open loop offering ``--factor`` times that from separate processes,
every call with a deadline and ``expected_step``, while a thread samples the
server's RSS; finally every session's counter against its acknowledgements.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec
from benchmarks.procs import MIB, rss_bytes
from benchmarks.scenarios.clients import RssSampler, merge, run_clients
from benchmarks.scenarios.stepclient import ClientSpec
from benchmarks.servers import Target, start_seqinfer

# The bounds the run is held to, as server settings (SEQINFER_* variables).
BOUNDS = {
    "SEQINFER_MAX_CONCURRENT_RPCS": "256",
    "SEQINFER_MAX_QUEUE_SIZE": "512",
    "SEQINFER_MAX_QUEUE_BYTES": str(8 * MIB),
}


def unloaded(target: Target, seconds: float) -> dict[str, Any]:
    stream = run_load(
        LoadSpec(
            target=target.address,
            transport="stream",
            sessions=4,
            duration=seconds,
            warmup=1.0,
            session_prefix="unloaded-stream",
        )
    )
    unary = merge(
        run_clients(
            [
                ClientSpec(
                    target=target.address,
                    prefix="unloaded-unary",
                    sessions=4,
                    duration=seconds,
                    rate=100.0,
                )
            ],
            timeout=seconds + 60,
        )
    )
    return {
        "stream_p50_ms": stream.latency.p50_ms,
        "stream_p99_ms": stream.latency.p99_ms,
        "stream_steps": stream.steps,
        "unary": unary.to_dict(),
    }


def sustainable(target: Target, seconds: float, procs: int) -> dict[str, Any]:
    specs = [
        ClientSpec(target=target.address, prefix=f"sustain{n}", sessions=64, duration=seconds)
        for n in range(procs)
    ]
    return merge(run_clients(specs, timeout=seconds + 60)).to_dict()


def overload(
    target: Target, rate: float, seconds: float, procs: int, deadline: float
) -> dict[str, Any]:
    # Enough sessions that a free one is there for every offer: the accepted
    # ones hold theirs for at most the deadline, the refused ones briefly.
    sessions = max(64, int(rate / procs * deadline))
    specs = [
        ClientSpec(
            target=target.address,
            prefix=f"over{n}",
            sessions=sessions,
            duration=seconds,
            rate=rate / procs,
            deadline_s=deadline,
        )
        for n in range(procs)
    ]
    before, cpu = rss_bytes(target.pid), target.cpu()
    with RssSampler(target.pid) as rss:
        merged = merge(run_clients(specs, timeout=seconds + 180))
    cpu = target.cpu() - cpu
    return {
        "offered_per_s": rate,
        "deadline_s": deadline,
        "client_procs": procs,
        "sessions": sessions * procs,
        "rss_before_mib": before / MIB,
        "rss_peak_mib": rss.peak / MIB,
        "rss_samples": rss.samples,
        # Includes the read-back and recovery after the load, a small part.
        "server_cpu_s": cpu,
        **merged.to_dict(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    started = time.time()
    bounds = {**BOUNDS, "SEQINFER_MAX_QUEUE_WAIT_MS": f"{args.max_queue_wait_ms:g}"}
    if args.max_concurrent_rpcs:
        bounds["SEQINFER_MAX_CONCURRENT_RPCS"] = str(args.max_concurrent_rpcs)
    if args.max_streams_per_connection:
        bounds["SEQINFER_MAX_STREAMS_PER_CONNECTION"] = str(args.max_streams_per_connection)
    with tempfile.TemporaryDirectory(prefix="seqinfer-overload-") as logs:
        target = start_seqinfer(Path(logs), env=bounds)
        try:
            base = unloaded(target, args.unloaded_seconds)
            sustain = sustainable(target, args.unloaded_seconds, args.client_procs)
            # --rate: an offered load fixed from another run's sustainable figure, for
            # bounds under which the closed loop itself is refused (a low max_concurrent_rpcs).
            rate = args.rate or args.factor * sustain["accepted_per_s"]
            over = overload(target, rate, args.duration, args.client_procs, args.deadline)
        finally:
            target.stop()
    unary_p99 = base["unary"]["accepted_p99_ms"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "bounds": bounds,
        "rss_budget_mib": args.rss_budget_mib,
        "unloaded": base,
        "sustainable": sustain,
        "overload": over,
        "p99_ratio_vs_unary": over["accepted_p99_ms"] / unary_p99 if unary_p99 else None,
        "p99_ratio_vs_stream": over["accepted_p99_ms"] / base["stream_p99_ms"]
        if base["stream_p99_ms"]
        else None,
        "seconds": time.time() - started,
    }


def report(r: dict[str, Any]) -> str:
    o, u, s = r["overload"], r["unloaded"], r["sustainable"]
    lines = [
        f"{r['date']}  load average before {r['load_average_before'][0]:.2f}, "
        f"after {r['load_average_after'][0]:.2f}, {r['cpus']} CPUs",
        f"unloaded p99: StreamSteps {u['stream_p99_ms']:.2f} ms, "
        f"unary Step {u['unary']['accepted_p99_ms']:.2f} ms",
        f"sustainable (unary, closed loop): {s['accepted_per_s']:.0f} steps/s",
        f"offered {o['offered_per_s']:.0f}/s for {o['seconds']:.0f} s from "
        f"{o['client_procs']} processes: sent {o['sent']}, not sent (no free session) "
        f"{o['unsent']}",
        f"accepted {o['accepted']} ({o['accepted_per_s']:.0f}/s), p50 "
        f"{o['accepted_p50_ms']:.2f} ms, p99 {o['accepted_p99_ms']:.2f} ms "
        f"(x{r['p99_ratio_vs_unary'] or 0:.1f} unary, x{r['p99_ratio_vs_stream'] or 0:.1f} "
        "stream unloaded)",
        f"RESOURCE_EXHAUSTED {o['rejected']}, p50 {o['rejected_p50_ms']:.2f} ms, "
        f"p99 {o['rejected_p99_ms']:.2f} ms; codes {o['codes']}",
        "failed calls' latency p50/p99 ms by code: "
        + ", ".join(f"{c} {p50:.1f}/{p99:.1f}" for c, (p50, p99) in o["failed_ms"].items()),
        f"RSS {o['rss_before_mib']:.0f} MiB before, peak {o['rss_peak_mib']:.0f} MiB "
        f"(budget {r['rss_budget_mib']} MiB, {o['rss_samples']} samples)",
        f"CPU seconds: server {o['server_cpu_s']:.1f}, clients {o['client_cpu_s']:.1f}",
        f"sessions {o['sessions']}: steps lost {o['steps_lost']}, applied unacknowledged "
        f"{o['applied_unacknowledged']} (recovered by resending {o['recovered']}; after: "
        f"lost {o['lost_after_recovery']}, unacknowledged "
        f"{o['unacknowledged_after_recovery']}); reply.step mismatches {o['step_mismatches']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.overload")
    parser.add_argument("--duration", type=float, default=30.0, help="overload seconds")
    parser.add_argument("--factor", type=float, default=3.0, help="offered / sustainable")
    parser.add_argument("--rate", type=float, default=0.0, help="offered steps/s (0: factor x)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=0.5, help="per call, seconds")
    parser.add_argument("--unloaded-seconds", type=float, default=5.0)
    parser.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=100.0,
        help="the server's max_queue_wait_ms (refuse by expected wait; 0 = off)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=0,
        help="the server's max_concurrent_rpcs (0: BOUNDS' 256); by Little's law it bounds "
        "accepted latency at about this many calls over the throughput",
    )
    parser.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=0,
        help="the server's max_streams_per_connection (HTTP/2 max_concurrent_streams; 0: off)",
    )
    parser.add_argument("--rss-budget-mib", type=float, default=1024.0)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
