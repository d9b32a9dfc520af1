"""Snapshot and restore time of N bench-gru sessions, in process, against a real SQLite file.

python -m benchmarks.durability -n 10000 -n 100000
python -m benchmarks.durability -n 10000 -n 100000 --store redis

Each session has a random state and a replay record (a 64-float cached
reply), as a session stepped with request ids has. Times: a full snapshot
(every session, what SIGTERM writes), an incremental one with nothing
changed (the periodic cost at rest), a restore into a fresh runtime, and
the largest stall of the event loop during the snapshot (a probe task that
wakes every millisecond), which is what serving would feel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqinfer.service.config import Settings
from seqinfer.service.durability import Durability
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.observer import NULL_OBSERVER
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.store import SqliteStore, StateStore


async def _probe(stalls: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        at = loop.time()
        await asyncio.sleep(0.001)
        stalls.append(loop.time() - at - 0.001)


def _open_store(state_dir: Path, redis_url: str | None) -> StateStore:
    if redis_url is None:
        return SqliteStore(state_dir)
    from seqinfer.service.store_redis import RedisStore

    return RedisStore(redis_url, f"bench:{state_dir.name}:")


async def run(n: int, state_dir: Path, redis_url: str | None = None) -> dict[str, Any]:
    settings = Settings(initial_capacity=1024, max_sessions=max(n, 1024), torch_threads=1)
    model = bench_gru()
    device = torch.device("cpu")
    runtime = ModelRuntime(model, settings, device, NULL_OBSERVER)
    await runtime.start()
    rng = np.random.default_rng(0)
    for i in range(n):
        session = await runtime.create_session(f"s{i}", None)
        reply = StepOutcome(session.session_id, f"r{i}", 5, rng.random(64, np.float32))
        runtime.scheduler.restore(session, 5, f"r{i}", 4, reply)
    await runtime._on_worker(runtime.slab.tensor.normal_)
    durability = Durability(_open_store(state_dir, redis_url), [runtime], 0)
    stalls: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.get_running_loop().create_task(_probe(stalls, stop))
    started = time.perf_counter()
    await durability.snapshot(full=True)
    full = time.perf_counter() - started
    stop.set()
    await probe
    started = time.perf_counter()
    await durability.snapshot(full=False)
    unchanged = time.perf_counter() - started
    await durability.close(final=False)
    await runtime.stop()
    size = (state_dir / "sessions.sqlite3").stat().st_size if redis_url is None else 0

    fresh = ModelRuntime(model, settings, device, NULL_OBSERVER)
    await fresh.start()
    durability = Durability(_open_store(state_dir, redis_url), [fresh], 0)
    started = time.perf_counter()
    restored, refused = await durability.restore()
    restore = time.perf_counter() - started
    assert (restored, refused) == (n, 0), (restored, refused)
    await durability.close(final=False)
    await fresh.stop()
    return {
        "store": "sqlite" if redis_url is None else "redis",
        "sessions": n,
        "snapshot_all_s": round(full, 3),
        "snapshot_unchanged_s": round(unchanged, 3),
        "max_loop_stall_ms": round(1000 * max(stalls, default=0.0), 1),
        "restore_s": round(restore, 3),
        "store_mib": round(size / 2**20, 1) if size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability", description=__doc__)
    parser.add_argument("-n", "--sessions", type=int, action="append", default=[])
    parser.add_argument(
        "--store",
        choices=["sqlite", "redis"],
        default="sqlite",
        help="redis: a redis-server started here on loopback (no append-only file: "
        "what is timed is the snapshot's scripts and the restore's reads)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as redis_dir:
        redis_server = None
        if args.store == "redis":
            from tests.redis_server import RedisServer

            redis_server = RedisServer(Path(redis_dir))
            redis_server.start()
        try:
            for n in args.sessions or [10_000]:
                with tempfile.TemporaryDirectory() as tmp:
                    url = None if redis_server is None else redis_server.url
                    print(json.dumps(asyncio.run(run(n, Path(tmp), url))), flush=True)
        finally:
            if redis_server is not None:
                redis_server.stop()


if __name__ == "__main__":
    main()
