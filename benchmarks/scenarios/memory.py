"""Memory: RSS per idle session, and RSS over many steps (no growth).

Both talk to a fresh seqinfer server and read its RSS from /proc between
phases. Sessions are created with StepMany (``start`` on every item, no
outputs), many per message, because opening a million sessions one RPC at a
time would measure the transport for minutes; every session then holds a
stepped (non-zero) state, as a real idle session does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from benchmarks.loadgen.messages import MANY_PATH
from seqinfer.v1 import seqinfer_pb2 as pb

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass
class IdlePoint:
    sessions: int
    rss_bytes: int
    # (RSS now - RSS after the first message) / sessions opened since.
    bytes_per_session: float


@dataclass
class IdleResult:
    model: str
    state_bytes: int  # layers * hidden * 4
    target_bytes: float  # 1.5 * state_bytes + 512
    baseline_rss: int
    points: list[IdlePoint] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GrowthResult:
    steps: int
    sessions: int
    # (steps done, RSS) samples; the first is taken after a warm-up tenth.
    samples: list[tuple[int, int]] = field(default_factory=list)
    growth: float = 0.0  # (last - first) / first
    errors: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _many(
    sids: list[str], data: bytes, input_size: int, start: bool, model: str, mode: int
) -> bytes:
    inputs = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, input_size], data=data)
    steps = []
    for sid in sids:
        step = pb.StepRequest(session_id=sid, inputs=inputs, output_mode=mode)  # type: ignore[arg-type]
        if start:
            step.start = True
            step.model = model
            step.idle_ttl_seconds = 0.0  # never expire: they must stay for the reading
        steps.append(step)
    return bytes(pb.StepManyRequest(steps=steps).SerializeToString())


def _errors(raw: bytes) -> int:
    return sum(
        1 for r in pb.StepManyResponse.FromString(raw).results if r.WhichOneof("outcome") == "error"
    )


async def _settled_rss(rss: Callable[[], int], wait: float = 1.5) -> int:
    # The slab grows by doubling and frees the old one on the engine thread;
    # give the allocator a moment so the reading is the steady state.
    await asyncio.sleep(wait)
    return rss()


async def idle_sessions(
    address: str,
    rss: Callable[[], int],
    checkpoints: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    per_message: int = 1024,
    in_flight: int = 4,
    model: str = "bench-gru",
    input_size: int = 64,
    layers: int = 2,
    hidden: int = 256,
    progress: Callable[[int], None] | None = None,
) -> IdleResult:
    """Open sessions up to each checkpoint; RSS per session at each."""
    state_bytes = layers * hidden * 4
    data = np.ones((1, input_size), dtype="<f4").tobytes()
    result = IdleResult(model, state_bytes, 1.5 * state_bytes + 512, baseline_rss=0)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call: Any = channel.unary_unary(MANY_PATH)
        limit = asyncio.Semaphore(in_flight)

        async def send(first: int, count: int) -> None:
            sids = [f"idle-{i}" for i in range(first, first + count)]
            message = _many(sids, data, input_size, True, model, pb.OUTPUT_MODE_NONE)
            async with limit:
                result.errors += _errors(await call(message, timeout=120))

        # One message first, so that buffers every request needs exist before
        # the baseline reading; those sessions are left out of the division.
        await send(0, per_message)
        created = warm = per_message
        result.baseline_rss = await _settled_rss(rss)

        for target in sorted(checkpoints):
            tasks = []
            while created < target:
                count = min(per_message, target - created)
                tasks.append(asyncio.create_task(send(created, count)))
                created += count
                if len(tasks) >= 4 * in_flight:
                    await asyncio.gather(*tasks)
                    tasks = []
                    if progress:
                        progress(created)
            await asyncio.gather(*tasks)
            now = await _settled_rss(rss)
            per_session = (now - result.baseline_rss) / (target - warm)
            result.points.append(IdlePoint(target, now, per_session))
    result.seconds = time.perf_counter() - started
    return result


async def steady_growth(
    address: str,
    rss: Callable[[], int],
    total_steps: int = 1_000_000,
    sessions: int = 1024,
    per_message: int = 256,
    model: str = "bench-gru",
    input_size: int = 64,
    samples: int = 10,
    progress: Callable[[int], None] | None = None,
) -> GrowthResult:
    """Step a fixed set of sessions `total_steps` times; RSS every tenth."""
    rng = np.random.default_rng(7)
    data = rng.standard_normal((1, input_size), dtype=np.float32).astype("<f4").tobytes()
    groups = [
        [f"grow-{i}" for i in range(k, min(k + per_message, sessions))]
        for k in range(0, sessions, per_message)
    ]
    result = GrowthResult(steps=0, sessions=sessions)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call: Any = channel.unary_unary(MANY_PATH)
        firsts = [_many(g, data, input_size, True, model, pb.OUTPUT_MODE_LAST) for g in groups]
        steadies = [_many(g, data, input_size, False, model, pb.OUTPUT_MODE_LAST) for g in groups]
        for message in firsts:
            result.errors += _errors(await call(message, timeout=120))
        done = [sessions]
        every = max(total_steps // samples, 1)
        next_sample = [every]
        lock = asyncio.Lock()

        async def loop(k: int) -> None:
            while done[0] < total_steps:
                result.errors += _errors(await call(steadies[k], timeout=120))
                done[0] += len(groups[k])
                if done[0] >= next_sample[0]:
                    async with lock:
                        if done[0] >= next_sample[0]:
                            result.samples.append((done[0], rss()))
                            next_sample[0] += every
                            if progress:
                                progress(done[0])

        await asyncio.gather(*(loop(k) for k in range(len(groups))))
    result.steps = done[0]
    result.samples.append((done[0], rss()))
    first = result.samples[0][1]
    result.growth = (result.samples[-1][1] - first) / first if first else 0.0
    result.seconds = time.perf_counter() - started
    return result
