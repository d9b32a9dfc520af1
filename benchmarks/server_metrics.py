"""Split a seqinfer server's CPU per cell into engine time and gRPC front-end time.

The harness reads the server process's total CPU over a cell; that total
alone cannot say whether a change moved the GRU engine or the gRPC side
(decode, scheduling, encode, the event loop). So around each cell the harness
also reads the server's Prometheus counters and the CPU time of its engine
thread (from /proc; the launcher gives each Python thread its name at the OS
level, see ``servers.SERVE_CODE``).

Engine CPU is the engine thread's CPU plus the batches computed inline on the
event-loop thread (a batch of one single-timestep request, when the engine
thread is idle, runs there to save two thread hand-offs). The metric
``seqinfer_batch_compute_seconds`` alone is no engine CPU: for a batch handed
to the engine thread it is the wall time until the event loop takes the
result back, which under load includes the loop's other work (3x the engine
thread's CPU at StreamSteps N=64 on 2 cores). It is exact for inline batches,
but the exposition does not tell them apart; they are the size-1 batches
(``seqinfer_batch_size`` le=1), each counted at an upper bound of its time:
the smaller of the cell's mean batch time and the engine thread's mean CPU
per other batch (and all of them at most the batch time the engine thread's
CPU leaves). So the estimate is exact where every batch ran inline (N=1) or
none did (StepMany, StreamSteps at high N), and a slight overestimate in
between. Front-end CPU is the rest of the process's CPU.

A StreamSteps item and a unary Step carry one timestep each (as the load
generator sends them), so there a message is an item; a StepMany message
carries many, and its front-end cost is given both per message and per item.
The sessions' CloseSession calls at the end of a cell are in the CPU total but
not in the message count: one per session, they add a little to every cell.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# The gRPC method whose calls carry the cell's messages, per load transport;
# StreamSteps is counted per call by the server, so its items are the steps.
MESSAGE_METHOD = {"unary": "Step", "many": "StepMany"}
# OS-level name prefix of the engine threads (runtime.py's SerialWorker names).
ENGINE_THREAD = "engine-"
# OS-level name the launcher gives the main (event-loop) thread: its threads are named.
MAIN_THREAD = "seqinfer-main"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Reading:
    """Counters of one scrape (summed over models) and thread CPU at that moment."""

    compute_seconds: float = 0.0
    batches: float = 0.0
    size1_batches: float = 0.0
    items: float = 0.0
    # OK and failed calls alike, per gRPC method.
    calls: dict[str, float] = field(default_factory=dict)
    engine_thread_s: float = 0.0
    loop_thread_s: float = 0.0
    # False: the server's threads bear no names of their own (not started by
    # servers.SERVE_CODE), so the engine thread cannot be told apart.
    named: bool = False


@dataclass
class CpuSplit:
    """One cell's server CPU, split; per-unit figures in microseconds."""

    items: int
    messages: int
    total_cpu_s: float
    engine_s: float
    engine_us_per_item: float
    frontend_us_per_message: float
    frontend_us_per_item: float
    # What the split is made of, for a reader checking it.
    engine_thread_s: float
    inline_s: float
    loop_thread_s: float
    batch_wall_s: float  # Δ seqinfer_batch_compute_seconds_sum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(text: str) -> Reading:
    """The counters this module needs from one Prometheus text exposition."""
    reading = Reading()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, sample.value
            if name == "seqinfer_batch_compute_seconds_sum":
                reading.compute_seconds += value
            elif name == "seqinfer_batch_compute_seconds_count":
                reading.batches += value
            elif name == "seqinfer_batch_size_bucket" and float(sample.labels["le"]) == 1.0:
                reading.size1_batches += value
            elif name == "seqinfer_steps_total":
                reading.items += value
            elif name == "seqinfer_grpc_requests_total":
                method = sample.labels.get("method", "")
                reading.calls[method] = reading.calls.get(method, 0.0) + value
    return reading


def _task_cpu(task: Path) -> float:
    """CPU seconds of one thread: schedstat's nanoseconds, else stat's clock ticks.

    Ticks (10 ms) are too coarse for an engine thread busy a few ms per cell.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_cpu(pid: int) -> tuple[float, float, bool]:
    """CPU seconds of `pid`'s engine threads and its main (event-loop) thread; named?"""
    engine = loop = 0.0
    named = False
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            cpu = _task_cpu(task)
            comm = (task / "comm").read_text().strip()
            if int(task.name) == pid:
                loop = cpu
                named = comm == MAIN_THREAD
            elif comm.startswith(ENGINE_THREAD):
                engine += cpu
    return engine, loop, named


def read(port: int, pid: int, timeout: float = 5.0) -> Reading:
    """The server's /metrics on loopback, and its threads' CPU."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        reading = parse(reply.read().decode())
    reading.engine_thread_s, reading.loop_thread_s, reading.named = thread_cpu(pid)
    return reading


def split(before: Reading, after: Reading, cpu_s: float, transport: str) -> CpuSplit | None:
    """Engine and front-end shares of `cpu_s`, from two readings around a cell.

    None when the server computed nothing in between, its exposition lacks
    the counters (e.g. an old baseline commit) or its threads are unnamed.
    """
    items = round(after.items - before.items)
    method = MESSAGE_METHOD.get(transport)
    if method is None:
        messages = items
    else:
        messages = round(after.calls.get(method, 0.0) - before.calls.get(method, 0.0))
    if items <= 0 or messages <= 0 or not after.named:
        return None
    wall = after.compute_seconds - before.compute_seconds
    batches = after.batches - before.batches
    size1 = after.size1_batches - before.size1_batches
    thread = after.engine_thread_s - before.engine_thread_s
    inline = 0.0
    if size1 > 0 and batches > 0:
        per_batch = wall / batches
        if batches > size1:
            per_batch = min(per_batch, thread / (batches - size1))
        # A handed-off batch's wall time is at least its engine-thread CPU, so
        # what the inline batches can have taken is at most the rest.
        inline = min(size1 * per_batch, max(0.0, wall - thread))
    engine = thread + inline
    frontend = cpu_s - engine
    return CpuSplit(
        items=items,
        messages=messages,
        total_cpu_s=cpu_s,
        engine_s=engine,
        engine_us_per_item=engine / items * 1e6,
        frontend_us_per_message=frontend / messages * 1e6,
        frontend_us_per_item=frontend / items * 1e6,
        engine_thread_s=thread,
        inline_s=inline,
        loop_thread_s=after.loop_thread_s - before.loop_thread_s,
        batch_wall_s=wall,
    )
