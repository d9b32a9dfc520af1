"""One load run against one server layout, and what each of its processes spent on it.

The load generator (separate processes, ``benchmarks.loadgen``) says what
the client saw. Around it this reads every server process's CPU (/proc),
the engine's step counter, and, per front end, the calls it finished (the
``frontend`` label of ``seqinfer_grpc_requests_total``, which front ends
push to the engine process about once a second). Because those pushes lag,
the per-front-end counts are awaited until they account for the calls the
load made, with a bound: the condition awaited is the counts themselves.

CPU is over the whole load run (warm-up, measured phase, the sessions'
closing calls) and is divided by every step the server computed in it, as
the main harness does (``benchmarks/measure.py``): a per-step cost that
noise moves less than throughput.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.frontends.layout import Layout
from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec

# The gRPC method whose calls a load makes, per transport.
METHOD = {"stream": "StreamSteps", "unary": "Step", "many": "StepMany"}
# How long the front ends' pushed counters may take to catch up (they push every second).
CALLS_TIMEOUT_S = 6.0


@dataclass
class Counters:
    """One scrape of the server's /metrics: steps computed, calls per front end."""

    steps: float = 0.0
    # (front end label, method) -> calls finished; "" is the single process.
    calls: dict[tuple[str, str], float] = field(default_factory=dict)


def parse(text: str) -> Counters:
    counters = Counters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "seqinfer_steps_total":
                counters.steps += sample.value
            elif sample.name == "seqinfer_grpc_requests_total":
                key = (sample.labels.get("frontend", ""), sample.labels.get("method", ""))
                counters.calls[key] = counters.calls.get(key, 0.0) + sample.value
    return counters


def scrape(port: int) -> Counters:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return parse(reply.read().decode())


def calls_by_frontend(before: Counters, after: Counters, method: str) -> dict[str, int]:
    """Calls of ``method`` each front end finished between two scrapes."""
    fronts = {f for f, m in after.calls if m == method}
    return {
        f: round(after.calls.get((f, method), 0.0) - before.calls.get((f, method), 0.0))
        for f in sorted(fronts, key=lambda f: (len(f), f))
    }


@dataclass
class CellResult:
    """What one cell measured; CPU per process in seconds, per unit in microseconds."""

    key: str
    server: str
    frontends: int
    transport: str
    sessions: int
    # "rr": round-robin over the front ends' own ports; "kernel": the shared port.
    routing: str
    connections: int
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_samples: list[str]
    # Steps the engine computed over the whole load run (its counter).
    items: int
    # gRPC messages that carried them (a StreamSteps or Step message is one step).
    messages: int
    cpu_s: dict[str, float]
    calls: dict[str, int]
    calls_complete: bool
    client_cpu_s: float

    def role_cpu(self, role: str) -> float:
        """CPU seconds of ``supervisor``, ``engine``, ``frontend`` (all of them) or ``server``."""
        if role == "server":
            return sum(self.cpu_s.values())
        return sum(s for name, s in self.cpu_s.items() if name.split("-")[0] == role)

    def us_per(self, role: str, unit: str) -> float:
        count = self.items if unit == "item" else self.messages
        return self.role_cpu(role) / count * 1e6 if count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        return cls(**data)


def expected_calls(spec: LoadSpec, ok_steps: int) -> int:
    """How many calls of the load's method the server finished, at least."""
    if spec.transport == "stream":
        return spec.sessions  # one stream per session, for warm-up and measured phase
    if spec.transport == "unary":
        return ok_steps
    return ok_steps // max(1, min(spec.per_message, spec.sessions))


def measure(layout: Layout, spec: LoadSpec, key: str, routing: str, show: bool) -> CellResult:
    metrics_port = layout.target.metrics_port
    assert metrics_port is not None, "the harness starts seqinfer with metrics on"
    before = scrape(metrics_port)
    cpu_before = layout.cpu()
    result = run_load(spec, show_progress=show, label=key)
    cpu_after = layout.cpu()
    method = METHOD[spec.transport]
    want = expected_calls(spec, result.steps + result.warmup_steps)
    deadline = time.monotonic() + CALLS_TIMEOUT_S
    while True:
        after = scrape(metrics_port)
        calls = calls_by_frontend(before, after, method)
        if sum(calls.values()) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    items = round(after.steps - before.steps)
    per_message = min(spec.per_message, spec.sessions) if spec.transport == "many" else 1
    return CellResult(
        key=key,
        server=layout.name,
        frontends=layout.frontends,
        transport=spec.transport,
        sessions=spec.sessions,
        routing=routing,
        connections=spec.channels * spec.client_procs,
        steps_per_s=result.steps_per_s,
        p50_ms=result.latency.p50_ms,
        p99_ms=result.latency.p99_ms,
        errors=result.errors,
        error_samples=result.error_samples[:3],
        items=items,
        messages=items // per_message,
        cpu_s={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
        calls=calls,
        calls_complete=sum(calls.values()) >= want,
        client_cpu_s=result.client_cpu_s,
    )
