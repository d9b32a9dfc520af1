"""Split a seqinfer server's CPU per cell into engine time and gRPC front-end time.

The harness reads the server process's total CPU over a cell; that total
alone cannot say whether a change moved the GRU engine or the gRPC side
(decode, scheduling, encode, the event loop). So the harness starts seqinfer
with a probe (``SERVE_CODE``) that sums the CPU time of the thread running
each ``GRUEngine.run`` call and exports it with the server's own metrics, and
reads the metrics endpoint before and after each cell. Front-end CPU is the
rest of the process's CPU.

Why a probe and not ``seqinfer_batch_compute_seconds``: that histogram's sum
is wall time. For a batch handed to the engine thread it runs until the event
loop takes the result back, which under load includes the loop's other work:
at StreamSteps N=64 on 2 cores it was 3x the engine thread's CPU. It is kept
in the results (``batch_wall_s``) for reference.

A StreamSteps item and a unary Step carry one timestep each (as the load
generator sends them), so there a message is an item; a StepMany message
carries many, and its front-end cost is given both per message and per item.
The sessions' CloseSession calls at the end of a cell are in the CPU total but
not in the message count: one per session, they add a little to every cell.
"""

from __future__ import annotations

import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# The probe's counter, added to the server's /metrics exposition.
ENGINE_CPU = "seqinfer_bench_engine_cpu_seconds"
# `python -c` program of a seqinfer server under test: `seqinfer serve` with
# the probe. time.thread_time() around each engine call is the CPU of the
# thread that ran it (event loop for an inline batch, engine thread otherwise),
# not counting waits for the GIL. Inline here, not imported: a --baseline-ref
# tree runs it too, with its own benchmarks package or none; a tree whose
# engine or collector differ runs unprobed, and its cells get no split.
SERVE_CODE = f"""\
import threading, time
def _probe():
    try:
        from prometheus_client.core import CounterMetricFamily
        from seqinfer.service.engine import GRUEngine
        from seqinfer.service.metrics.families import SeqinferCollector
        run, collect = GRUEngine.run, SeqinferCollector.collect
    except (ImportError, AttributeError):
        return
    per_thread = {{}}  # each thread adds to its own entry only: no lost update
    def timed_run(self, *args, **kwargs):
        started = time.thread_time()
        try:
            return run(self, *args, **kwargs)
        finally:
            key = threading.get_ident()
            per_thread[key] = per_thread.get(key, 0.0) + time.thread_time() - started
    def probed_collect(self):
        yield from collect(self)
        family = CounterMetricFamily({ENGINE_CPU!r}, "benchmark probe: CPU in GRUEngine.run")
        family.add_metric([], sum(list(per_thread.values())))
        yield family
    GRUEngine.run, SeqinferCollector.collect = timed_run, probed_collect
_probe()
from seqinfer.cli.main import main
main()
"""
# The gRPC method whose calls carry the cell's messages, per load transport;
# StreamSteps is counted per call by the server, so its items are the steps.
MESSAGE_METHOD = {"unary": "Step", "many": "StepMany"}


@dataclass
class Reading:
    """The counters of one scrape, summed over models."""

    compute_seconds: float = 0.0
    items: float = 0.0
    # OK and failed calls alike, per gRPC method.
    calls: dict[str, float] = field(default_factory=dict)
    # None: the server runs without the probe.
    engine_cpu_s: float | None = None


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
    batch_wall_s: float  # Δ seqinfer_batch_compute_seconds_sum, for reference

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
            elif name == "seqinfer_steps_total":
                reading.items += value
            elif name == "seqinfer_grpc_requests_total":
                method = sample.labels.get("method", "")
                reading.calls[method] = reading.calls.get(method, 0.0) + value
            elif name == f"{ENGINE_CPU}_total":
                reading.engine_cpu_s = value
    return reading


def scrape(port: int, timeout: float = 5.0) -> Reading:
    """Read the server's /metrics on loopback."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return parse(reply.read().decode())


def split(before: Reading, after: Reading, cpu_s: float, transport: str) -> CpuSplit | None:
    """Engine and front-end shares of `cpu_s`, from two readings around a cell.

    None when the server computed nothing in between or runs without the probe.
    """
    items = round(after.items - before.items)
    method = MESSAGE_METHOD.get(transport)
    if method is None:
        messages = items
    else:
        messages = round(after.calls.get(method, 0.0) - before.calls.get(method, 0.0))
    if items <= 0 or messages <= 0 or before.engine_cpu_s is None or after.engine_cpu_s is None:
        return None
    engine = after.engine_cpu_s - before.engine_cpu_s
    frontend = cpu_s - engine
    return CpuSplit(
        items=items,
        messages=messages,
        total_cpu_s=cpu_s,
        engine_s=engine,
        engine_us_per_item=engine / items * 1e6,
        frontend_us_per_message=frontend / messages * 1e6,
        frontend_us_per_item=frontend / items * 1e6,
        batch_wall_s=after.compute_seconds - before.compute_seconds,
    )
