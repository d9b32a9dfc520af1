"""Metrics on vs off: the same server, load and model, alternating, median of rounds.

    python -m benchmarks.metrics_overhead --transport stream --sessions 256 --rounds 3

The server runs in this process (metrics on: a real Prometheus exporter on a
free loopback port; off: no exporter); the load runs in a separate process,
one StreamSteps stream per session in ping-pong, or StepMany messages of all
sessions. Prints steps/s and the server's CPU per step for each round, and
the on/off ratios of the medians. The CPU figure is this process's CPU time
(event loop, engine thread, exporter) over the round divided by the steps
answered: on a shared machine it scatters far less than throughput does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import numpy as np

from seqinfer.service.config import load_settings
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.server import SeqinferServer
from seqinfer.v1 import seqinfer_pb2 as pb


def _request(index: int, start: bool, data: bytes) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=f"m{index}",
        start=start,
        model="bench-gru",
        inputs=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 64], data=data),
    )


async def _load(address: str, transport: str, sessions: int, seconds: float) -> tuple[float, int]:
    """Steps per second the server answered and how many (the load process's side)."""
    data = np.random.default_rng(0).random((1, 64), dtype=np.float32).tobytes()
    async with grpc.aio.insecure_channel(address) as channel:
        if transport == "many":
            call = channel.unary_unary("/seqinfer.v1.Seqinfer/StepMany")
            first = pb.StepManyRequest(steps=[_request(i, True, data) for i in range(sessions)])
            rest = pb.StepManyRequest(steps=[_request(i, False, data) for i in range(sessions)])
            await call(first.SerializeToString())
            payload = rest.SerializeToString()
            started, steps = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                await call(payload)
                steps += sessions
            return steps / (time.perf_counter() - started), steps
        count = [0]
        started = time.perf_counter()

        async def session(index: int) -> None:
            call = channel.stream_stream("/seqinfer.v1.Seqinfer/StreamSteps")()
            await call.write(_request(index, True, data).SerializeToString())
            await call.read()
            message = _request(index, False, data).SerializeToString()
            while time.perf_counter() - started < seconds:
                await call.write(message)
                await call.read()
                count[0] += 1
            await call.done_writing()

        await asyncio.gather(*(session(i) for i in range(sessions)))
        return count[0] / (time.perf_counter() - started), count[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Round:
    steps_per_second: float
    cpu_us_per_step: float  # this process's CPU time over the round / steps answered


async def _one_round(transport: str, sessions: int, seconds: float, metrics: bool) -> Round:
    # load_settings, not Settings(...): the same settings, but mypy (without
    # pydantic's plugin) reads every Settings field as a required argument.
    settings = load_settings(
        host="127.0.0.1",
        port=0,
        metrics_port=_free_port() if metrics else 0,
        device="cpu",
        initial_capacity=max(sessions, 1024),
    )
    server = SeqinferServer(settings, [bench_gru()])
    await server.start()
    try:
        cpu_started = time.process_time()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.metrics_overhead",
            "--load-only",
            f"127.0.0.1:{server.port}",
            "--transport",
            transport,
            "--sessions",
            str(sessions),
            "--seconds",
            str(seconds),
            stdout=subprocess.PIPE,
        )
        out, _ = await process.communicate()
        cpu = time.process_time() - cpu_started
        rate, steps = out.decode().split()
        return Round(float(rate), cpu * 1e6 / max(int(steps), 1))
    finally:
        await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stream", "many"], default="stream")
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--load-only", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        rate, steps = asyncio.run(
            _load(args.load_only, args.transport, args.sessions, args.seconds)
        )
        print(rate, steps)
        return
    on: list[Round] = []
    off: list[Round] = []
    for index in range(args.rounds):
        off.append(asyncio.run(_one_round(args.transport, args.sessions, args.seconds, False)))
        on.append(asyncio.run(_one_round(args.transport, args.sessions, args.seconds, True)))
        print(
            f"round {index}: metrics off {off[-1].steps_per_second:,.0f}, "
            f"on {on[-1].steps_per_second:,.0f} steps/s; server CPU per step "
            f"off {off[-1].cpu_us_per_step:.1f}, on {on[-1].cpu_us_per_step:.1f} µs",
            flush=True,
        )
    rate_on = statistics.median(r.steps_per_second for r in on)
    rate_off = statistics.median(r.steps_per_second for r in off)
    cpu_on = statistics.median(r.cpu_us_per_step for r in on)
    cpu_off = statistics.median(r.cpu_us_per_step for r in off)
    print(
        f"{args.transport} N={args.sessions}: metrics on/off = {rate_on / rate_off:.3f} "
        f"(medians of {args.rounds}: on {rate_on:,.0f}, off {rate_off:,.0f} steps/s); "
        f"server CPU per step on/off = {cpu_on / cpu_off:.3f} "
        f"(on {cpu_on:.1f}, off {cpu_off:.1f} µs)"
    )


if __name__ == "__main__":
    main()
