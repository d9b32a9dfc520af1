"""One load-generator process: an asyncio grpc.aio client driving its share of sessions.

Phases, per process:
1. warm-up: every caller opens its stream (if any) and steps for
   ``spec.warmup`` seconds; its first request creates its session(s);
2. a barrier across all callers of all processes, so the measured phase of
   every process starts together;
3. measured: ``spec.steps`` requests per caller, or until ``spec.duration``
   seconds have passed, recording each request's latency;
4. tear-down: streams closed, sessions closed (not measured).

A *caller* is one session (stream, unary) or one group of sessions (StepMany).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.loadgen import messages
from benchmarks.loadgen.channels import open_channel
from benchmarks.loadgen.messages import ReplyCheck, SessionMessages
from benchmarks.loadgen.spec import LoadSpec
from seqinfer.client.spread import await_spread

# At most this many error texts are kept per process.
MAX_ERROR_SAMPLES = 5


@dataclass
class Tally:
    """What this process measured; written to its result file."""

    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    warmup_steps: int = 0
    # Steps done in both phases, for the progress bar.
    done: int = 0

    def note(self, ok: int, bad: int, problem: str) -> None:
        self.ok += ok
        self.errors += bad
        if problem and len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(problem)


class Phase:
    """The barrier between warm-up and the measured phase, across processes."""

    def __init__(self, callers: int, barrier: Barrier, spec: LoadSpec) -> None:
        self._waiting = callers
        self._barrier = barrier
        self._spec = spec
        self._go = asyncio.Event()
        self.t0 = 0.0
        self.deadline = float("inf")
        self.cpu0 = 0.0

    async def arrive(self) -> None:
        """Wait until every caller everywhere has finished warming up."""
        await self._count_in()
        await self._go.wait()

    async def leave(self) -> None:
        """A caller that failed before arriving: count it in, without waiting."""
        await self._count_in()

    async def _count_in(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            await asyncio.to_thread(self._barrier.wait)
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()
            if self._spec.steps <= 0:
                self.deadline = self.t0 + self._spec.duration
            self._go.set()

    def measuring_more(self, sent: int) -> bool:
        """True while a caller that has sent `sent` measured requests should send more."""
        if self._spec.steps > 0:
            return sent < self._spec.steps
        return time.perf_counter() < self.deadline


class Gate:
    """One caller's view of the Phase: remembers whether it has arrived."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.arrived = False

    async def arrive(self) -> None:
        self.arrived = True
        await self.phase.arrive()


# A function that sends one request and returns its raw reply.
Exchange = Callable[[bytes], Awaitable[bytes]]


class StreamCaller:
    """One bidirectional stream per session: write a request, read its reply."""

    def __init__(self, channel: grpc.aio.Channel, path: str) -> None:
        self._call: Any = channel.stream_stream(path)()

    async def exchange(self, request: bytes) -> bytes:
        await self._call.write(request)
        reply = await self._call.read()
        if reply is grpc.aio.EOF:
            raise ConnectionError("stream ended before its reply")
        return bytes(reply)

    async def write(self, request: bytes) -> None:
        await self._call.write(request)

    async def read(self) -> bytes:
        reply = await self._call.read()
        if reply is grpc.aio.EOF:
            raise ConnectionError("stream ended before its reply")
        return bytes(reply)

    async def close(self) -> None:
        await self._call.done_writing()
        while await self._call.read() is not grpc.aio.EOF:
            pass


class UnaryCaller:
    """A unary RPC per request (Step or StepMany)."""

    def __init__(self, channel: grpc.aio.Channel, path: str) -> None:
        self._method: Any = channel.unary_unary(path)

    async def exchange(self, request: bytes) -> bytes:
        return bytes(await self._method(request))

    async def close(self) -> None:
        return None


async def _pingpong(
    exchange: Exchange,
    msgs: SessionMessages,
    check: ReplyCheck,
    tally: Tally,
    gate: Gate,
    warmup_s: float,
) -> None:
    steady = msgs.steady
    per = msgs.steps_per_request
    ok, bad, problem = check(await exchange(msgs.first))
    tally.note(0, bad, problem)
    tally.warmup_steps += per
    tally.done += per
    warm_until = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < warm_until:
        ok, bad, problem = check(await exchange(steady[i % len(steady)]))
        tally.note(0, bad, problem)
        tally.warmup_steps += per
        tally.done += per
        i += 1
    await gate.arrive()
    phase = gate.phase
    sent = 0
    latencies = tally.latencies_ns
    clock = time.perf_counter_ns
    deadline_ns = int(phase.deadline * 1e9) if phase.deadline != float("inf") else None
    while phase.measuring_more(sent):
        started = clock()
        reply = await exchange(steady[i % len(steady)])
        finished = clock()
        latencies.append(finished - started)
        ok, bad, problem = check(reply)
        if deadline_ns is not None and finished > deadline_ns:
            ok = 0  # completed after the window closed: latency kept, not counted
        tally.note(ok, bad, problem)
        tally.done += per
        sent += 1
        i += 1


async def _pipelined(
    caller: StreamCaller,
    msgs: SessionMessages,
    check: ReplyCheck,
    tally: Tally,
    gate: Gate,
    warmup_s: float,
    depth: int,
) -> None:
    # Warm up ping-pong (it only has to create the session and heat caches).
    await _pingpong_warmup(caller, msgs, check, tally, warmup_s)
    await gate.arrive()
    phase = gate.phase
    steady = msgs.steady
    in_flight: deque[int] = deque()
    slots = asyncio.Semaphore(depth)
    clock = time.perf_counter_ns
    deadline_ns = int(phase.deadline * 1e9) if phase.deadline != float("inf") else None
    writer_done = asyncio.Event()
    sent_box = [0]

    async def writer() -> None:
        i = 0
        while phase.measuring_more(sent_box[0]):
            await slots.acquire()
            in_flight.append(clock())
            await caller.write(steady[i % len(steady)])
            sent_box[0] += 1
            i += 1
        writer_done.set()

    async def reader() -> None:
        received = 0
        while not (writer_done.is_set() and received >= sent_box[0]):
            reply = await caller.read()
            finished = clock()
            tally.latencies_ns.append(finished - in_flight.popleft())
            ok, bad, problem = check(reply)
            if deadline_ns is not None and finished > deadline_ns:
                ok = 0
            tally.note(ok, bad, problem)
            tally.done += 1
            received += 1
            slots.release()

    await asyncio.gather(writer(), reader())


async def _pingpong_warmup(
    caller: StreamCaller, msgs: SessionMessages, check: ReplyCheck, tally: Tally, warmup_s: float
) -> None:
    _, bad, problem = check(await caller.exchange(msgs.first))
    tally.note(0, bad, problem)
    tally.warmup_steps += 1
    tally.done += 1
    warm_until = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < warm_until:
        _, bad, problem = check(await caller.exchange(msgs.steady[i % len(msgs.steady)]))
        tally.note(0, bad, problem)
        tally.warmup_steps += 1
        tally.done += 1
        i += 1


def _plan(spec: LoadSpec, indices: list[int]) -> tuple[str, list[SessionMessages], ReplyCheck]:
    """The RPC path, each caller's messages, and the reply check, per transport."""
    if spec.transport == "torchserve":
        from benchmarks.peers.torchserve import client as ts

        return ts.STREAM_PATH, [ts.messages(spec, i) for i in indices], ts.check_reply(spec)
    if spec.transport == "many":
        groups = [
            indices[k : k + spec.per_message] for k in range(0, len(indices), spec.per_message)
        ]
        plan = [messages.seqinfer_many(spec, g) for g in groups]
        return messages.MANY_PATH, plan, messages.check_many_reply(spec.output_size)
    plan = [messages.seqinfer_single(spec, i) for i in indices]
    if spec.transport == "unary":
        return messages.STEP_PATH, plan, messages.check_unary_reply(spec.output_size)
    return messages.STREAM_PATH, plan, messages.check_stream_reply(spec.output_size)


async def _close_sessions(channel: grpc.aio.Channel, sids: list[str], tally: Tally) -> None:
    """Close this process's sessions, a few at a time; failures only noted."""
    close: Any = channel.unary_unary(messages.CLOSE_PATH)
    limit = asyncio.Semaphore(64)

    async def one(sid: str) -> None:
        async with limit:
            try:
                await close(messages.close_request(sid), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if len(tally.error_samples) < MAX_ERROR_SAMPLES:
                    tally.error_samples.append(f"close {sid}: {exc.code().name}")

    await asyncio.gather(*(one(s) for s in sids))


async def _progress_ticker(tally: Tally, progress: Synchronized, stop: asyncio.Event) -> None:
    # The shared counter is updated a few times a second, not per step: a
    # locked increment per step would cost the client more than the step.
    while not stop.is_set():
        progress.value = tally.done
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass
    progress.value = tally.done


async def run_process(
    spec: LoadSpec,
    indices: list[int],
    barrier: Barrier,
    progress: Synchronized,
) -> dict[str, Any]:
    """Drive `indices` sessions; return this process's counts and window."""
    path, plan, check = _plan(spec, indices)
    channels = [open_channel(spec) for _ in range(spec.channels)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        if spec.addresses:  # as the client's addresses= does: every front end, from the start
            await await_spread(channel, len(set(spec.addresses)), 30)
    tally = Tally()
    phase = Phase(len(plan), barrier, spec)
    stop = asyncio.Event()
    ticker = asyncio.create_task(_progress_ticker(tally, progress, stop))
    last_done = [0.0]

    async def drive(k: int, msgs: SessionMessages) -> None:
        channel = channels[k % len(channels)]
        caller: StreamCaller | UnaryCaller
        gate = Gate(phase)
        if spec.transport in ("stream", "torchserve"):
            caller = StreamCaller(channel, path)
        else:
            caller = UnaryCaller(channel, path)
        try:
            if spec.mode == "pipelined" and isinstance(caller, StreamCaller):
                await _pipelined(caller, msgs, check, tally, gate, spec.warmup, spec.depth)
            else:
                await _pingpong(caller.exchange, msgs, check, tally, gate, spec.warmup)
            last_done[0] = max(last_done[0], time.perf_counter())
            await caller.close()
        except (grpc.aio.AioRpcError, ConnectionError) as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                text = f"{exc.code().name} {exc.details() or ''} {exc.debug_error_string()[:300]}"
            else:
                text = str(exc)
            tally.note(0, 1, f"caller {k} failed: {text}")
            if not gate.arrived:
                await phase.leave()
            last_done[0] = max(last_done[0], time.perf_counter())

    try:
        await asyncio.gather(*(drive(k, m) for k, m in enumerate(plan)))
        cpu = time.process_time() - phase.cpu0
        if spec.close_sessions and spec.transport != "torchserve":
            sids = [sid for m in plan for sid in m.session_ids]
            await _close_sessions(channels[0], sids, tally)
    finally:
        stop.set()
        await ticker
        for channel in channels:
            await channel.close()
    return {
        "ok": tally.ok,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "warmup_steps": tally.warmup_steps,
        "t0": phase.t0,
        "t_last": last_done[0],
        "cpu_s": cpu,
        "latencies_ns": tally.latencies_ns,
    }


def worker_main(
    spec_dict: dict[str, Any],
    indices: list[int],
    barrier: Barrier,
    progress: Synchronized,
    out_path: str,
) -> None:
    """Process entry point: run, then write counts (JSON) and latencies (.npy)."""
    spec = LoadSpec.from_dict(spec_dict)
    try:
        result = asyncio.run(run_process(spec, indices, barrier, progress))
    except BaseException as exc:
        # The parent must not wait forever on a barrier this process never reaches.
        barrier.abort()
        Path(out_path).with_suffix(".json").write_text(json.dumps({"fatal": repr(exc)}))
        raise
    latencies = np.asarray(result.pop("latencies_ns"), dtype=np.int64)
    np.save(Path(out_path).with_suffix(".npy"), latencies)
    Path(out_path).with_suffix(".json").write_text(json.dumps(result))
