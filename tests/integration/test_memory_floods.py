"""A client cannot grow the server's memory past its configured bounds (RSS of a real process).

Two floods that each grew the server by gigabytes before the bounds existed:
a stream that sends and never reads its replies, and one session flooded
with 1 MiB requests over a stream. The server runs in a subprocess with
small bounds; the test floods it from raw stubs for a bounded count and
time and reads ``VmRSS`` from ``/proc/<pid>/status`` throughout.

The budget is the bounds plus a fixed allowance for what the bounds do not
cover (gRPC's transport buffers and the allocator's slack), well under
what either flood reached before: about 100 MB per second on this machine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.models.builtin import bench_gru
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import from_tensor, reference_run, status_reason, to_tensor

MIB = 1024 * 1024
BOUNDS = {
    "SEQINFER_MAX_STREAM_UNSENT_BYTES": 8 * MIB,
    "SEQINFER_MAX_SESSION_QUEUE_BYTES": 4 * MIB,
    "SEQINFER_MAX_QUEUE_BYTES": 16 * MIB,
}
ALLOWANCE = 128 * MIB
BUDGET = sum(BOUNDS.values()) + ALLOWANCE
FLOOD_SECONDS = 6.0
LARGE = {"grpc.max_send_message_length": 64 * MIB, "grpc.max_receive_message_length": 64 * MIB}

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def server() -> Iterator[tuple[int, str]]:
    env = {**{k: str(v) for k, v in BOUNDS.items()}, "SEQINFER_TORCH_THREADS": "1"}
    with ServeProcess(serve_args("--log-level", "WARNING"), env=env) as process:
        yield process.pid, process.address(timeout=120)


class Peak:
    """The highest RSS growth seen since ``baseline`` was read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = _rss(pid)
        self.growth = 0

    def sample(self) -> None:
        self.growth = max(self.growth, _rss(self.pid) - self.baseline)


async def _never_read(address: str, peak: Peak, limit: int) -> int:
    """Sends up to ``limit`` 128-step requests whose replies are never read; returns how many."""
    options = list(LARGE.items())
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        x = to_tensor(np.zeros((128, 64), np.float32))  # 32 KiB in, 32 KiB out
        sent = 0

        async def requests() -> Any:
            nonlocal sent
            while sent < limit:
                sent += 1
                yield pb.StepRequest(
                    session_id=f"n{sent % 64}",
                    start=True,
                    model="bench-gru",
                    inputs=x,
                    output_mode=pb.OUTPUT_MODE_ALL,
                )

        call = stub.StreamSteps(requests())
        stop = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < stop and sent < limit:
            await asyncio.sleep(0.1)
            peak.sample()
        call.cancel()
        return sent


def test_stream_that_never_reads_its_replies_stays_under_budget(server):
    pid, address = server
    peak = Peak(pid)
    limit = 6000  # 190 MiB of requests and as much of replies: far past the budget
    sent = asyncio.run(_never_read(address, peak, limit))
    peak.sample()
    print(f"never-read stream: {sent} requests sent, RSS grew {peak.growth / MIB:.0f} MiB")
    assert sent < limit, "the server read the whole flood: no flow control"
    assert peak.growth < BUDGET, f"RSS grew {peak.growth / MIB:.0f} MiB, budget {BUDGET / MIB}"


async def _one_session(address: str, peak: Peak, limit: int) -> tuple[Counter[str], int]:
    async with grpc.aio.insecure_channel(address, options=list(LARGE.items())) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        await stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="flood"))
        big = to_tensor(np.zeros((4096, 64), np.float32))  # 1 MiB of inputs
        stop = time.monotonic() + FLOOD_SECONDS
        outcomes: Counter[str] = Counter()

        def requests() -> Iterator[pb.StepRequest]:
            for _ in range(limit):
                if time.monotonic() > stop:
                    return
                yield pb.StepRequest(
                    session_id="flood", inputs=big, output_mode=pb.OUTPUT_MODE_NONE
                )

        async def sampler() -> None:
            while time.monotonic() < stop:
                await asyncio.sleep(0.1)
                peak.sample()

        async def consume() -> None:
            async for result in stub.StreamSteps(requests()):
                if result.HasField("error"):
                    _, reason, metadata = status_reason(result.error)
                    outcomes[f"{reason}:{metadata.get('bound', '')}"] += 1
                else:
                    outcomes["OK"] += 1

        sampling = asyncio.ensure_future(sampler())
        # Bounded: what is queued when the flood stops is a few requests (the
        # bounds), while an unbounded queue would hold minutes of work.
        await asyncio.wait_for(consume(), FLOOD_SECONDS + 60)
        await sampling
        info = await stub.GetSession(pb.GetSessionRequest(session_id="flood"))
        return outcomes, info.step


def test_one_session_flooded_with_large_requests_stays_under_budget(server):
    pid, address = server
    model = bench_gru()
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SeqinferStub(channel)
        stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="bystander"))
        stub.Step(pb.StepRequest(session_id="bystander", inputs=to_tensor(x[:1])))
        peak = Peak(pid)
        outcomes, applied = asyncio.run(_one_session(address, peak, limit=3000))
        peak.sample()
        for row in x[1:]:
            stub.Step(pb.StepRequest(session_id="bystander", inputs=to_tensor(row[None])))
        state = stub.ExportState(pb.ExportStateRequest(session_id="bystander")).state
    print(f"one-session flood: {dict(outcomes)}, RSS grew {peak.growth / MIB:.0f} MiB")
    assert outcomes["QUEUE_FULL:max_session_queue_bytes"] > 0, outcomes
    assert set(outcomes) <= {"OK", "QUEUE_FULL:max_session_queue_bytes"}, outcomes
    assert applied == 4096 * outcomes["OK"], "a refused request was applied, or part of one"
    assert peak.growth < BUDGET, f"RSS grew {peak.growth / MIB:.0f} MiB, budget {BUDGET / MIB}"
    _, want = reference_run(model, x)
    np.testing.assert_allclose(from_tensor(state), want, atol=1e-5, rtol=0)
