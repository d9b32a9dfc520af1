"""What a load run does (``LoadSpec``) and what it measured (``LoadResult``).

Both are plain dataclasses that round-trip through dicts, so that they cross
process boundaries and land in the results JSON unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# StreamSteps (one stream per session), unary Step, StepMany (many sessions per
# message), or TorchServe's StreamPredictions2 (one stream per session).
Transport = Literal["stream", "unary", "many", "torchserve"]
TRANSPORTS: tuple[str, ...] = ("stream", "unary", "many", "torchserve")

# ping-pong: a step waits for its reply before the next is sent.
# pipelined: up to `depth` steps of one session in flight (streams only,
# because only a stream promises per-session order).
Mode = Literal["pingpong", "pipelined"]


@dataclass
class LoadSpec:
    """One load run against one server."""

    target: str
    transport: Transport = "stream"
    mode: Mode = "pingpong"
    sessions: int = 16
    # Steps in flight per session in pipelined mode.
    depth: int = 4
    # Sessions per StepMany message (the last message of a run may hold fewer).
    per_message: int = 256
    model: str = "bench-gru"
    input_size: int = 64
    # Length of one step's output vector, checked on every reply.
    output_size: int = 64
    # Measured phase: `steps` per session when > 0, else `duration` seconds.
    steps: int = 0
    duration: float = 5.0
    # Warm-up before the measured phase: seconds per session, and at least
    # one step (which creates the session).
    warmup: float = 1.0
    client_procs: int = 1
    # gRPC channels (TCP connections) per client process.
    channels: int = 1
    # The front ends' own ports (``serve --frontends K``): each channel then
    # spreads its calls over them round-robin (the client's ``addresses=``);
    # empty: every channel goes to ``target``.
    addresses: list[str] = field(default_factory=list)
    # Prefix of the session ids: unique per run so runs never share sessions.
    session_prefix: str = "lg"
    # Distinct input vectors cycled per session (pre-serialised once).
    input_variants: int = 4
    # Idle TTL sent with `start`; None: the server's default.
    idle_ttl: float | None = None
    # Close every session at the end (not measured).
    close_sessions: bool = True
    # TorchServe only: the registered model's name.
    ts_model: str = "bench-gru"

    def validate(self) -> None:
        """Raise ValueError on a spec that cannot run."""
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.mode == "pipelined" and self.transport not in ("stream", "torchserve"):
            raise ValueError("pipelined mode needs a stream transport (per-session order)")
        if self.sessions < 1 or self.client_procs < 1 or self.channels < 1:
            raise ValueError("sessions, client_procs and channels must be >= 1")
        if self.client_procs > self.sessions:
            raise ValueError("more client processes than sessions")
        if self.steps <= 0 and self.duration <= 0:
            raise ValueError("need steps > 0 or duration > 0")
        if self.depth < 1 or self.per_message < 1 or self.input_variants < 1:
            raise ValueError("depth, per_message and input_variants must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class LatencySummary:
    """Latency percentiles in milliseconds, and a log-spaced histogram."""

    count: int = 0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    # Histogram: counts per bin, bin edges in ms (len(edges) == len(counts) + 1).
    hist_edges_ms: list[float] = field(default_factory=list)
    hist_counts: list[int] = field(default_factory=list)


@dataclass
class LoadResult:
    """What one load run measured."""

    spec: LoadSpec
    # Steps completed in the measured phase (a StepMany message counts as
    # many steps as it carries).
    steps: int = 0
    seconds: float = 0.0
    steps_per_s: float = 0.0
    # Replies that carried an error (or RPCs that failed).
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    # One sample per request: per step for stream/unary, per message for many.
    latency: LatencySummary = field(default_factory=LatencySummary)
    # CPU seconds the client processes spent in the measured phase: a client
    # near len(client_procs) CPU-seconds per second is itself the bottleneck.
    client_cpu_s: float = 0.0
    warmup_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        data = dict(data)
        spec = LoadSpec.from_dict(data.pop("spec"))
        latency = LatencySummary(**data.pop("latency"))
        return cls(spec=spec, latency=latency, **data)
