"""Tiering and lazy restore: what a step costs when its session is in the store.

    python -m benchmarks.tiering                       # both parts
    python -m benchmarks.tiering --part steps --device-sessions 256 --steps 1000
    python -m benchmarks.tiering --part restore --restore-sessions 100000

``steps``: one server (bench-gru on SQLite, ``device_sessions`` D; once with
``durability: snapshot``, once with ``write-through``, whose every step also
waits for its commit's fsync) with 4D sessions. A *hot* step steps the same
session again (always on the device); a *restoring* step steps the least
recently used session, round-robin over all 4D (with D slots and LRU spills,
it is always in the store: its step reads the record, checks it, takes a
slot, spilling a group of idle sessions when there is none, scatters the
state, then computes). The two alternate,
one unary Step at a time over gRPC on loopback, so both see the same machine;
it prints p50/p99 of each and their ratio.

``restore``: a store of N bench-gru sessions written directly (records as the
server writes them), then the server started on it twice: ``restore: eager``
(the time start-up takes to restore all N) and ``restore: lazy`` (the time to
start, then the latency of the first step of 200 random sessions, each a
restore).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from seqinfer.service.config import load_settings
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.records import ArrayRecord, SessionRecord
from seqinfer.service.server import SeqinferServer
from seqinfer.service.store import SqliteStore
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


class _Server:
    """A SeqinferServer on its own event loop thread."""

    def __init__(self, **settings: Any) -> None:
        self.settings = load_settings(
            host="127.0.0.1", port=0, metrics_port=0, device="cpu", **settings
        )
        self.server = SeqinferServer(self.settings, [bench_gru()])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(600)

    def start(self) -> float:
        started = time.perf_counter()
        self.call(self.server.start())
        return time.perf_counter() - started

    def stop(self) -> None:
        self.call(self.server.stop(30))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _x() -> pb.Tensor:
    data = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 64], data=data.tobytes())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def steps_part(device: int, steps: int, durability: str) -> None:
    x = _x()
    with tempfile.TemporaryDirectory(prefix="seqinfer-tier-bench-") as tmp:
        server = _Server(
            durability=durability,
            state_dir=Path(tmp),
            snapshot_interval_seconds=0,
            device_sessions=device,
            initial_capacity=device,
        )
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.server.port}") as channel:
                api = pb_grpc.SeqinferStub(channel)
                total = 4 * device
                for i in range(total):  # open them all: the first 3D are now in the store
                    api.Step(pb.StepRequest(session_id=f"c{i}", start=True, inputs=x))
                api.Step(pb.StepRequest(session_id="hot", start=True, inputs=x))
                hot: list[float] = []
                cold: list[float] = []
                for k in range(steps):
                    started = time.perf_counter()
                    api.Step(pb.StepRequest(session_id="hot", inputs=x))
                    hot.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    api.Step(pb.StepRequest(session_id=f"c{k % total}", inputs=x))
                    cold.append(time.perf_counter() - started)
                runtime = server.server.runtimes[0]
                tiering = runtime.tiering
                assert tiering is not None
                spilled, restored = tiering.spilled, tiering.restored
                capacity = runtime.slab.capacity
        finally:
            server.stop()
    print(
        f"steps: bench-gru, {durability} on SQLite, device_sessions={device}, "
        f"{4 * device} sessions, {steps} steps of each kind, alternating"
    )
    print(f"  slab capacity {capacity}; spilled {spilled}, restored {restored}")
    for name, values in (("hot step", hot), ("restoring step", cold)):
        print(
            f"  {name:15s} p50 {1000 * _pct(values, 0.5):7.3f} ms   "
            f"p99 {1000 * _pct(values, 0.99):7.3f} ms   "
            f"mean {1000 * statistics.mean(values):.3f} ms"
        )
    print(
        f"  restoring / hot: p50 {_pct(cold, 0.5) / _pct(hot, 0.5):.1f}x, "
        f"p99 {_pct(cold, 0.99) / _pct(hot, 0.99):.1f}x"
    )


def _write_store(state_dir: Path, count: int) -> None:
    spec = bench_gru().spec
    rng = np.random.default_rng(1)
    state = rng.standard_normal((spec.num_layers, spec.hidden_size)).astype(np.float32).tobytes()
    now = time.time()
    store = SqliteStore(state_dir)
    chunk: list[tuple[str, bytes]] = []
    for i in range(count):
        record = SessionRecord(
            session_id=f"r{i}",
            model=spec.name,
            model_version=spec.version,
            state=ArrayRecord("float32", (spec.num_layers, spec.hidden_size), state),
            step=i,
            idle_ttl=0.0,
            created_at=now - 10,
            last_used=now - 10 + i * 1e-5,
        )
        chunk.append((record.key, record.encode()))
        if len(chunk) == 10_000:
            store.write(chunk)
            chunk = []
    store.write(chunk)
    store.close()


def restore_part(count: int, first_steps: int) -> None:
    x = _x()
    with tempfile.TemporaryDirectory(prefix="seqinfer-restore-bench-") as tmp:
        state_dir = Path(tmp)
        started = time.perf_counter()
        _write_store(state_dir, count)
        took = time.perf_counter() - started
        print(f"restore: {count} bench-gru sessions written in {took:.1f} s")
        common = {
            "durability": "snapshot",
            "state_dir": state_dir,
            "snapshot_interval_seconds": 0,
            "idle_ttl_seconds": 0,
            "max_sessions": max(count, 1_000_000),
        }
        # Not snapshotted at stop: both runs start from the same store.
        for mode in ("eager", "lazy"):
            server = _Server(restore=mode, shutdown_grace_seconds=30, **common)
            took = server.start()
            firsts: list[float] = []
            try:
                runtime = server.server.runtimes[0]
                assert len(runtime.table) == count, len(runtime.table)
                with grpc.insecure_channel(f"127.0.0.1:{server.server.port}") as channel:
                    api = pb_grpc.SeqinferStub(channel)
                    ids = random.Random(2).sample(range(count), first_steps)
                    for i in ids:
                        t0 = time.perf_counter()
                        reply = api.Step(pb.StepRequest(session_id=f"r{i}", inputs=x))
                        firsts.append(time.perf_counter() - t0)
                        assert reply.step == i + 1
                    t0 = time.perf_counter()
                    for i in ids[:first_steps]:
                        api.Step(pb.StepRequest(session_id=f"r{i}", inputs=x))
                    again = (time.perf_counter() - t0) / first_steps
                durability = server.server._durability
                assert durability is not None
                durability.close = _no_final_snapshot(durability.close)  # type: ignore[method-assign]
            finally:
                server.stop()
            print(
                f"  {mode:5s}: start-up (restore) {took:6.2f} s; first step of {first_steps} "
                f"random sessions p50 {1000 * _pct(firsts, 0.5):.3f} ms, "
                f"p99 {1000 * _pct(firsts, 0.99):.3f} ms; their second step mean "
                f"{1000 * again:.3f} ms"
            )


def _no_final_snapshot(close: Any) -> Any:
    async def closed(final: bool) -> None:
        await close(False)

    return closed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["steps", "restore", "all"], default="all")
    parser.add_argument("--device-sessions", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--restore-sessions", type=int, default=100_000)
    parser.add_argument("--first-steps", type=int, default=200)
    args = parser.parse_args()
    if args.part in ("steps", "all"):
        for durability in ("snapshot", "write-through"):
            steps_part(args.device_sessions, args.steps, durability)
    if args.part in ("restore", "all"):
        restore_part(args.restore_sessions, args.first_steps)


if __name__ == "__main__":
    main()
