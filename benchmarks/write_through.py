"""Write-through durability vs none: the same server, load and model, interleaved rounds.

    python -m benchmarks.write_through --transport stream --sessions 256 --rounds 3
    python -m benchmarks.write_through --transport many --sessions 256 --rounds 3
    python -m benchmarks.write_through --transport many --sessions 256 --rounds 3 --store redis

Three server configurations, run in turn in every round so that the machine's
drift hits all of them alike: ``none``; ``write-through`` as served (SQLite
``synchronous=FULL``: an fsync per commit); and ``write-through`` with the
store switched to ``synchronous=NORMAL`` after start-up, which only this
benchmark does, to show what the fsync costs (NORMAL keeps a commit through
a process crash, not through a machine crash: docs/durability.md). The
server runs in this process against a real SQLite file in a fresh temporary
state_dir; the load is ``benchmarks.metrics_overhead``'s load process (one
StreamSteps stream per session in ping-pong, or StepMany messages of every
session), after one discarded warm-up round. Prints steps/s per round, the
store's commits and mean records per commit (group commit at work), and the
ratios of the medians to ``none``.

``--store redis``: ``none`` against ``write-through`` on a redis-server this
command starts on loopback (tests/redis_server.py: append-only, an fsync per
write), a fresh key prefix per round; the server talks to it over TCP as it
would to a Redis on another host, without the network's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqinfer.service.config import load_settings
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.server import SeqinferServer

MODES = ("none", "write-through", "write-through-normal")


class _CountingStore:
    """The server's store, with its commits and their sizes counted."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.commits = 0
        self.records = 0
        self.seconds = 0.0  # in the store's write: encode excluded, fsync included
        self._lock = threading.Lock()

    def write(self, records: Iterable[Any], deletes: Iterable[str] = ()) -> Any:
        records = list(records)
        started = time.perf_counter()
        stale = self.store.write(records, deletes)
        took = time.perf_counter() - started
        with self._lock:
            self.commits += 1
            self.records += len(records)
            self.seconds += took
        return stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclass
class Round:
    steps_per_second: float
    commits: int
    records_per_commit: float
    ms_per_commit: float


async def _one_round(
    mode: str, transport: str, sessions: int, seconds: float, redis_url: str | None = None
) -> Round:
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Any] = {}
        if mode != "none":
            # No periodic pass: every write counted is a batch's commit.
            extra = dict(
                durability="write-through", state_dir=Path(tmp), snapshot_interval_seconds=0
            )
            if redis_url is not None:
                # A fresh prefix per round, as SQLite gets a fresh file.
                extra.update(
                    state_store="redis",
                    redis_url=redis_url,
                    redis_key_prefix=f"bench:{Path(tmp).name}:",
                )
        # load_settings, not Settings(...): mypy without pydantic's plugin reads
        # every Settings field as a required argument.
        settings = load_settings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            device="cpu",
            initial_capacity=max(sessions, 1024),
            **extra,
        )
        server = SeqinferServer(settings, [bench_gru()])
        await server.start()
        counting: _CountingStore | None = None
        durability = server._durability
        if durability is not None:
            store = durability.store
            if mode == "write-through-normal" and redis_url is None:
                with store._lock:
                    store._db.execute("PRAGMA synchronous=NORMAL")
            counting = _CountingStore(store)
            durability.store = counting
        try:
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
            rate, _steps = out.decode().split()
        finally:
            await server.stop(5)
        if counting is None or not counting.commits:
            return Round(float(rate), 0, 0.0, 0.0)
        commits = counting.commits
        return Round(
            float(rate), commits, counting.records / commits, 1000 * counting.seconds / commits
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stream", "many"], default="stream")
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--store",
        choices=["sqlite", "redis"],
        default="sqlite",
        help="redis: a redis-server started here on loopback, append-only with an "
        "fsync per write (appendfsync always), as deploy/docker-compose.redis.yml runs it",
    )
    args = parser.parse_args()
    if args.store == "redis":
        with tempfile.TemporaryDirectory() as tmp:
            from tests.redis_server import RedisServer

            redis_server = RedisServer(Path(tmp), appendonly=True)
            redis_server.start()
            try:
                _run(args, ("none", "write-through"), redis_server.url)
            finally:
                redis_server.stop()
    else:
        _run(args, MODES, None)


def _run(args: argparse.Namespace, modes: tuple[str, ...], redis_url: str | None) -> None:
    rounds: dict[str, list[Round]] = {mode: [] for mode in modes}
    started = time.perf_counter()
    # Discarded: the process's first server pays one-off costs (imports, torch
    # start-up) that would otherwise land on whichever mode runs first.
    asyncio.run(_one_round("none", args.transport, args.sessions, min(args.seconds, 1.0)))
    store = "" if redis_url is None else " on redis"
    for index in range(args.rounds):
        # Rotate the order so no mode always runs first (or last) in a round.
        for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
            result = asyncio.run(
                _one_round(mode, args.transport, args.sessions, args.seconds, redis_url)
            )
            rounds[mode].append(result)
            print(
                f"round {index} {mode}: {result.steps_per_second:,.0f} steps/s, "
                f"{result.commits} commits of {result.records_per_commit:.1f} sessions, "
                f"{result.ms_per_commit:.2f} ms each",
                flush=True,
            )
    medians = {m: statistics.median(r.steps_per_second for r in rs) for m, rs in rounds.items()}
    for mode in modes[1:]:
        per_commit = statistics.median(r.records_per_commit for r in rounds[mode])
        ms = statistics.median(r.ms_per_commit for r in rounds[mode])
        print(
            f"{args.transport} N={args.sessions}: {mode}{store}/none = "
            f"{medians[mode] / medians['none']:.3f} (medians of {args.rounds}: "
            f"{medians[mode]:,.0f} vs {medians['none']:,.0f} steps/s; "
            f"{per_commit:.1f} sessions per commit, {ms:.2f} ms per commit)"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
