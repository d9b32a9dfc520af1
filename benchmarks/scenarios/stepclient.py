"""A unary Step client that counts, per session, the steps acknowledged to it.

benchmarks.loadgen measures latency and throughput but keeps no per-session
account, and the overload claim is about exactly that: after a storm of
refusals and deadlines, every session's counter on the server must equal the
steps its client saw acknowledged. So this client sends every step with
``expected_step`` (the count acknowledged so far) and a request id derived
from it. A call that ends without an answer (DEADLINE_EXCEEDED) is simply
sent again with the same id and expectation on the session's next turn: if
the server applied it, the retry gets the cached reply instead of a second
application, so nothing is applied twice and the client can always catch up.

Run as a process of its own (``python -m benchmarks.scenarios.stepclient
SPEC.json OUT.json``), so that load comes from outside the server's process,
in one of two shapes: open loop (``rate`` steps per second offered whatever
the server does, to a session that has no call in flight) or closed loop
(``rate`` 0: each session steps again as soon as its reply arrives).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# The open loop issues what is due this often; finer costs client CPU.
TICK_S = 0.002


@dataclass
class ClientSpec:
    target: str
    prefix: str
    sessions: int
    duration: float
    # Offered steps per second (open loop); 0: closed loop, each session back to back.
    rate: float = 0.0
    deadline_s: float = 1.0
    token: str = ""
    model: str = "bench-gru"
    input_size: int = 64
    # Close the sessions at the end (after they are read back).
    close: bool = True


@dataclass
class ClientResult:
    spec: dict[str, Any]
    seconds: float = 0.0
    # This process's CPU seconds over the load: near `seconds`, the client is the bottleneck.
    cpu_s: float = 0.0
    # Calls sent, and offers of the open loop that found no session free (not sent).
    sent: int = 0
    unsent: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    accepted_ns: list[int] = field(default_factory=list)
    rejected_ns: list[int] = field(default_factory=list)
    # Every failed call's latency by its code (how promptly UNAVAILABLE or CANCELLED came).
    failed_ns: dict[str, list[int]] = field(default_factory=dict)
    # reply.step differing from the count the client expected (a bug if > 0).
    step_mismatches: int = 0
    acked: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    # Sessions whose pending (deadline-ended) step turned out applied, and were
    # then caught up by resending it: the cached reply, no second application.
    recovered: int = 0
    applied_after_recovery: dict[str, int] = field(default_factory=dict)
    acked_after_recovery: dict[str, int] = field(default_factory=dict)


class Sessions:
    """Per-session accounting: acknowledged steps, and which sessions are free."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.ids = [f"{spec.prefix}-{i}" for i in range(spec.sessions)]
        self.acked = dict.fromkeys(self.ids, 0)
        self.free: deque[str] = deque(self.ids)
        rng = np.random.default_rng(abs(hash(spec.prefix)) % 2**32)
        self._data = rng.standard_normal((1, spec.input_size), dtype=np.float32).tobytes()

    def request(self, sid: str) -> pb.StepRequest:
        done = self.acked[sid]
        request = pb.StepRequest(
            session_id=sid,
            inputs=pb.Tensor(
                dtype=pb.DTYPE_FLOAT32, shape=[1, self.spec.input_size], data=self._data
            ),
            request_id=f"{sid}:{done}",
            expected_step=done,
            output_mode=pb.OUTPUT_MODE_LAST,
        )
        if done == 0:
            request.start = True
            request.model = self.spec.model
        return request


class Stepper:
    """Sends one step of a session and books its outcome."""

    def __init__(self, spec: ClientSpec, stub: pb_grpc.SeqinferStub, result: ClientResult) -> None:
        self.spec = spec
        self.stub = stub
        self.result = result
        self.sessions = Sessions(spec)
        self.metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else None
        self.codes: Counter[str] = Counter()
        self.counting = True

    async def step(self, sid: str) -> None:
        request = self.sessions.request(sid)
        started = time.perf_counter_ns()
        try:
            reply = await self.stub.Step(
                request, timeout=self.spec.deadline_s, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as e:
            took = time.perf_counter_ns() - started
            self.codes[e.code().name] += 1
            if e.code() == RESOURCE_EXHAUSTED and self.counting:
                self.result.rejected_ns.append(took)
            if self.counting:
                self.result.failed_ns.setdefault(e.code().name, []).append(took)
            return
        took = time.perf_counter_ns() - started
        self.codes["OK"] += 1
        self.sessions.acked[sid] += 1
        if reply.step != self.sessions.acked[sid]:
            self.result.step_mismatches += 1
        if self.counting:
            self.result.accepted_ns.append(took)


async def _open_loop(stepper: Stepper, spec: ClientSpec) -> None:
    sessions = stepper.sessions
    tasks: set[asyncio.Task[None]] = set()

    async def one(sid: str) -> None:
        try:
            await stepper.step(sid)
        finally:
            sessions.free.append(sid)

    started = time.monotonic()
    issued = 0
    while (elapsed := time.monotonic() - started) < spec.duration:
        for _ in range(int(spec.rate * elapsed) - issued):
            issued += 1
            if not sessions.free:
                stepper.result.unsent += 1
                continue
            task = asyncio.create_task(one(sessions.free.popleft()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stepper.result.sent += 1
        await asyncio.sleep(TICK_S)
    stepper.counting = False
    if tasks:
        await asyncio.wait(tasks)


async def _closed_loop(stepper: Stepper, spec: ClientSpec) -> None:
    stop = time.monotonic() + spec.duration

    async def loop(sid: str) -> None:
        while time.monotonic() < stop:
            stepper.result.sent += 1
            await stepper.step(sid)

    await asyncio.gather(*(loop(sid) for sid in stepper.sessions.ids))
    stepper.counting = False


async def _read_counters(stepper: Stepper) -> dict[str, int]:
    counters: dict[str, int] = {}
    for sid in stepper.sessions.ids:
        try:
            info = await stepper.stub.GetSession(
                pb.GetSessionRequest(session_id=sid), timeout=10, metadata=stepper.metadata
            )
            counters[sid] = info.step
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            counters[sid] = 0  # never created: nothing applied
    return counters


async def run(spec: ClientSpec) -> ClientResult:
    result = ClientResult(spec=asdict(spec))
    async with grpc.aio.insecure_channel(spec.target) as channel:
        stepper = Stepper(spec, pb_grpc.SeqinferStub(channel), result)
        started, cpu = time.monotonic(), time.process_time()
        await (_open_loop if spec.rate > 0 else _closed_loop)(stepper, spec)
        result.seconds = time.monotonic() - started
        result.cpu_s = time.process_time() - cpu
        result.codes = dict(stepper.codes)
        result.acked = dict(stepper.sessions.acked)
        result.applied = await _read_counters(stepper)
        # A session ahead of its client holds one applied step whose reply was
        # lost to a deadline; resending that very request must answer it from
        # the cache, which brings client and server level without a second step.
        behind = [sid for sid, n in result.applied.items() if n > result.acked[sid]]
        stepper.spec = ClientSpec(**{**asdict(spec), "deadline_s": 10.0})
        for sid in behind:
            await stepper.step(sid)
        result.recovered = sum(
            1 for sid in behind if stepper.sessions.acked[sid] > result.acked[sid]
        )
        result.applied_after_recovery = await _read_counters(stepper) if behind else result.applied
        result.acked_after_recovery = dict(stepper.sessions.acked)
        if spec.close:
            for sid in stepper.sessions.ids:
                try:
                    await stepper.stub.CloseSession(
                        pb.CloseSessionRequest(session_id=sid),
                        timeout=10,
                        metadata=stepper.metadata,
                    )
                except grpc.aio.AioRpcError:
                    pass
    return result


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    spec = ClientSpec(**json.loads(Path(args[0]).read_text()))
    result = asyncio.run(run(spec))
    Path(args[1]).write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
