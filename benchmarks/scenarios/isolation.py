"""Two tenants on one model: does tenant A's flood raise tenant B's p99?

Issue 12 asks that one tenant flooding never raise another's p99 by more
than 2x. This benchmark measures it on one ``seqinfer serve`` with a token
file of three tokens: ``light`` (tenant B, a light steady open loop),
``flood`` (tenant A without a quota, many sessions back to back from
separate processes) and ``flood-quota`` (the same flood, with a
steps_per_second quota in its token line), ``flood-queued`` (the same
flood with a ``max_queued`` quota). B's p99 is taken alone, beside the
flood, and beside each quota-held flood. Batches take ready sessions
round-robin by tenant (queues.ReadyRing).

    python -m benchmarks.scenarios.isolation [--seconds 15] [--quota 200] [--max-queued 16]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.baseline import server_env
from benchmarks.procs import ServerProcess, free_port
from benchmarks.scenarios.clients import merge, run_clients
from benchmarks.scenarios.stepclient import ClientSpec
from benchmarks.server_metrics import SERVE_CODE
from benchmarks.servers import REPO
from seqinfer.service.tenants import new_token, token_hash
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


def _ready(address: str, token: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
            pb_grpc.SeqinferStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=2, metadata=(("authorization", f"Bearer {token}"),)
            )
        except (grpc.FutureTimeoutError, grpc.RpcError):
            return False
    return True


def start_server(
    log_dir: Path, token_file: Path, probe_token: str, stream_cap: int = 0
) -> tuple[ServerProcess, str]:
    """`seqinfer serve` with the token file (benchmarks.servers' probe has no token);
    ``stream_cap``: its max_streams_per_connection (0: off)."""
    port = free_port()
    argv = [
        sys.executable, "-c", SERVE_CODE, "serve",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
        "--device", "cpu", "--log-level", "WARNING",
    ]  # fmt: skip
    settings = {"SEQINFER_AUTH_TOKEN_FILE": str(token_file)}
    if stream_cap:
        settings["SEQINFER_MAX_STREAMS_PER_CONNECTION"] = str(stream_cap)
    env = server_env(REPO, settings)
    server = ServerProcess("seqinfer-tenants", argv, log_dir / "server.log", env=env, cwd=str(REPO))
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        server.wait_ready(lambda: _ready(address, probe_token), timeout=120)
    except BaseException:
        server.stop()
        raise
    return server, address


def phase(
    address: str,
    light: str,
    flood: str | None,
    seconds: float,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    specs = [
        ClientSpec(
            target=address,
            prefix=f"b-{tag}",
            sessions=args.light_sessions,
            duration=seconds,
            rate=args.light_rate,
            token=light,
        )
    ]
    for n in range(args.flood_procs if flood else 0):
        specs.append(
            ClientSpec(
                target=address,
                prefix=f"a-{tag}-{n}",
                sessions=args.flood_sessions,
                duration=seconds,
                token=flood or "",
            )
        )
    parts = run_clients(specs, timeout=seconds + 180)
    result = {"light": merge(parts[:1]).to_dict()}
    if flood:
        result["flood"] = merge(parts[1:]).to_dict()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    started = time.time()
    tokens = {name: new_token() for name in ("light", "flood", "flood-quota", "flood-queued")}
    lines = [
        f"{token_hash(tokens['light'])} light",
        f"{token_hash(tokens['flood'])} flood",
        f"{token_hash(tokens['flood-quota'])} flood-quota steps_per_second={args.quota:g}",
        f"{token_hash(tokens['flood-queued'])} flood-queued max_queued={args.max_queued}",
    ]
    with tempfile.TemporaryDirectory(prefix="seqinfer-tenants-") as tmp:
        token_file = Path(tmp, "tokens")
        token_file.write_text("\n".join(lines) + "\n")
        server, address = start_server(
            Path(tmp), token_file, tokens["light"], args.max_streams_per_connection
        )
        try:
            alone = phase(address, tokens["light"], None, args.seconds, args, "alone")
            flooded = phase(address, tokens["light"], tokens["flood"], args.seconds, args, "flood")
            quota = phase(
                address, tokens["light"], tokens["flood-quota"], args.seconds, args, "quota"
            )
            queued = phase(
                address, tokens["light"], tokens["flood-queued"], args.seconds, args, "queued"
            )
        finally:
            server.stop()
    base = alone["light"]["accepted_p99_ms"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "settings": {
            k: getattr(args, k)
            for k in ("seconds", "light_rate", "light_sessions", "flood_procs", "flood_sessions")
        }
        | {"quota_steps_per_second": args.quota, "quota_max_queued": args.max_queued},
        "alone": alone,
        "flooded": flooded,
        "quota": quota,
        "queued": queued,
        "ratio_flooded": flooded["light"]["accepted_p99_ms"] / base if base else None,
        "ratio_quota": quota["light"]["accepted_p99_ms"] / base if base else None,
        "ratio_queued": queued["light"]["accepted_p99_ms"] / base if base else None,
        "seconds": time.time() - started,
    }


def report(r: dict[str, Any]) -> str:
    def light(p: dict[str, Any]) -> str:
        b = p["light"]
        return (
            f"B p50 {b['accepted_p50_ms']:.2f} ms, p99 {b['accepted_p99_ms']:.2f} ms, "
            f"{b['accepted_per_s']:.0f}/s, codes {b['codes']}"
        )

    def flood(p: dict[str, Any]) -> str:
        a = p["flood"]
        return f"A {a['accepted_per_s']:.0f}/s accepted, codes {a['codes']}"

    return "\n".join(
        [
            f"{r['date']}  load average before {r['load_average_before'][0]:.2f}, "
            f"after {r['load_average_after'][0]:.2f}, {r['cpus']} CPUs; {r['settings']}",
            f"B alone:            {light(r['alone'])}",
            f"A flooding:         {light(r['flooded'])}; x{r['ratio_flooded'] or 0:.1f}",
            f"                    {flood(r['flooded'])}",
            f"A flooding, quota:  {light(r['quota'])}; x{r['ratio_quota'] or 0:.1f}",
            f"                    {flood(r['quota'])}",
            f"A flooding, queued: {light(r['queued'])}; x{r['ratio_queued'] or 0:.1f}",
            f"                    {flood(r['queued'])}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.isolation")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--quota", type=float, default=200.0, help="A's steps_per_second")
    parser.add_argument("--max-queued", type=int, default=16, help="A's max_queued")
    parser.add_argument("--light-rate", type=float, default=50.0, help="B's steps/s")
    parser.add_argument("--light-sessions", type=int, default=8)
    parser.add_argument("--flood-procs", type=int, default=2)
    parser.add_argument("--flood-sessions", type=int, default=64, help="per process")
    parser.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=0,
        help="the server's max_streams_per_connection (HTTP/2 max_concurrent_streams; 0: off)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
