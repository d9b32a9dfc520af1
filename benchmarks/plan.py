"""What one harness run measures: the scenario sizes per profile.

``full`` is the issue's matrix; ``quick`` is a shorter look at the same
shape; ``smoke`` runs in seconds (CI) and measures nothing worth reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.scenarios.compute import BATCH_SIZES


@dataclass
class Plan:
    name: str
    sessions: tuple[int, ...]
    transports: tuple[str, ...] = ("stream", "unary", "many")
    servers: tuple[str, ...] = ("echo", "handwritten", "seqinfer")
    duration: float = 5.0
    warmup: float = 1.5
    # Sessions per StepMany message (capped by N).
    per_message: int = 256
    # bench-gru-large: handwritten vs seqinfer, StreamSteps, at these N.
    large_sessions: tuple[int, ...] = (256,)
    compute_batches: tuple[int, ...] = BATCH_SIZES
    compute_seconds: float = 0.5
    # TorchServe rival: N sessions, K steps each, ping-pong (0 sessions: skip).
    torchserve_sessions: int = 64
    torchserve_steps: int = 500
    # Memory: idle-session checkpoints, and steps for the no-growth check.
    idle_checkpoints: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    growth_steps: int = 1_000_000
    # Memory parts each on a fresh server (False: on the load matrix's server,
    # which is only good enough to exercise the code, as the smoke plan does).
    memory_fresh_server: bool = True
    # py-spy profile of seqinfer at these (transport, N) cells (extra runs).
    profile_cells: tuple[tuple[str, int], ...] = (("stream", 256), ("many", 256))
    # Extra `seqinfer serve` flags and environment, for what-if runs of a fix.
    seqinfer_args: tuple[str, ...] = ()
    seqinfer_env: dict[str, str] = field(default_factory=dict)
    # A git ref whose `seqinfer serve` runs beside this tree's as "baseline"
    # (same flags and environment) in the load matrix; "" for none.
    baseline_ref: str = ""
    verify: bool = True
    repeat: int = 1
    client_procs: int = 1
    notes: list[str] = field(default_factory=list)


PLANS: dict[str, Plan] = {
    # Three interleaved repeats of the load matrix: single cells on a shared
    # 2-core machine swing by 30 % and more; the median repeat is reported.
    "full": Plan("full", sessions=(1, 16, 64, 256, 1024), repeat=3),
    "quick": Plan(
        "quick",
        sessions=(1, 64, 256),
        duration=3.0,
        warmup=1.0,
        compute_batches=(1, 16, 64, 256, 1024, 4096),
        compute_seconds=0.3,
        idle_checkpoints=(10_000, 100_000),
        growth_steps=200_000,
    ),
    "smoke": Plan(
        "smoke",
        sessions=(4,),
        duration=0.5,
        warmup=0.2,
        per_message=4,
        large_sessions=(),
        compute_batches=(1, 4),
        compute_seconds=0.05,
        torchserve_sessions=0,
        # Just enough to run the memory code paths.
        idle_checkpoints=(3_000,),
        growth_steps=4_000,
        memory_fresh_server=False,
        profile_cells=(),
    ),
}
