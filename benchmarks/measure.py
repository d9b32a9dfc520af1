"""One cell: a load run against one server, and what the server spent on it.

The load generator measures what the client saw (throughput, latency). What
the server paid for it is read around the run: the server process's CPU
(its whole tree), its RSS after, and, for a seqinfer server, its metrics
endpoint, whose counters split that CPU into engine and front-end time
(benchmarks/server_metrics.py). Each reading sits as close to the load run
as it can, so what is read is the cell's and nothing else's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks import server_metrics, servers
from benchmarks.cells import cell_key
from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadSpec
from benchmarks.plan import Plan
from benchmarks.procs import load_average
from benchmarks.run_log import RunLog

# (input size, output size) of each model a cell may load.
MODEL_SIZES = {"bench-gru": (64, 64), "bench-gru-large": (256, 256)}


@dataclass
class Cell:
    """One load run against one server, and what the server spent on it."""

    key: str
    server: str
    transport: str
    model: str
    sessions: int
    steps: int  # per session; 0 = fixed duration
    result: dict[str, Any]
    # Server CPU seconds over the whole run (warm-up + measured + teardown)
    # divided by all steps it served: a per-step cost that noise affects less
    # than wall-clock throughput does.
    server_cpu_us_per_step: float
    server_rss_after: int
    load_before: float
    error: str = ""
    # seqinfer servers: the CPU above split into engine and front-end time
    # (server_metrics.CpuSplit as a dict); None where the server exports no metrics.
    cpu_split: dict[str, Any] | None = None


class CellMeter:
    """Measures cells of one run: the plan's durations and load shape, the run's log."""

    def __init__(self, plan: Plan, log: RunLog, run_id: str, show_progress: bool) -> None:
        self.plan = plan
        self.log = log
        # In every session id, so that no two cells (nor two runs) share a session.
        self.run_id = run_id
        self.show_progress = show_progress

    def spec(
        self, target: servers.Target, transport: str, model: str, sessions: int, steps: int = 0
    ) -> LoadSpec:
        input_size, output_size = MODEL_SIZES[model]
        return LoadSpec(
            target=target.address,
            transport=transport,  # type: ignore[arg-type]
            sessions=sessions,
            per_message=min(self.plan.per_message, sessions),
            model=model,
            input_size=input_size,
            output_size=output_size,
            steps=steps,
            duration=self.plan.duration,
            warmup=self.plan.warmup,
            client_procs=min(self.plan.client_procs, sessions),
            session_prefix=f"{target.name}-{transport}-{sessions}-{self.run_id}-{time.monotonic_ns()}",
        )

    def measure(
        self,
        server: str,
        target: servers.Target,
        transport: str,
        model: str,
        sessions: int,
        steps: int = 0,
    ) -> Cell | None:
        """The cell, or None (and a problem in the log) when the load run failed."""
        key = cell_key(server, transport, model, sessions, steps)
        spec = self.spec(target, transport, model, sessions, steps)
        load = load_average()[0]
        # Read before the CPU (and after it below), so the scrape's own cost stays outside.
        counters = self._scrape(target)
        cpu_before = target.cpu()
        try:
            result = run_load(spec, show_progress=self.show_progress, label=key)
        except Exception as exc:
            self.log.problem(key, exc)
            return None
        cpu = target.cpu() - cpu_before
        after = self._scrape(target)
        split = None
        if counters is not None and after is not None:
            split = server_metrics.split(counters, after, cpu, transport)
        served = result.steps + result.warmup_steps
        cell = Cell(
            key=key,
            server=server,
            transport=transport,
            model=model,
            sessions=sessions,
            steps=steps,
            result=result.to_dict(),
            server_cpu_us_per_step=cpu / served * 1e6 if served else 0.0,
            server_rss_after=target.rss(),
            load_before=load,
            cpu_split=split.to_dict() if split else None,
        )
        lat = result.latency
        self.log.say(
            f"{key}: {result.steps_per_s:,.0f} steps/s, p50 {lat.p50_ms:.2f} ms, "
            f"p99 {lat.p99_ms:.2f} ms, errors {result.errors}, "
            f"server {cell.server_cpu_us_per_step:.0f} µs CPU/step, client CPU "
            f"{result.client_cpu_s / max(result.seconds, 1e-9):.2f} cores"
            + (
                f"; engine {split.engine_us_per_item:.1f} µs/item, front end "
                f"{split.frontend_us_per_message:.0f} µs/message"
                if split
                else ""
            )
        )
        if result.errors:
            self.log.say(f"  error samples: {result.error_samples[:3]}")
        return cell

    def _scrape(self, target: servers.Target) -> server_metrics.Reading | None:
        if target.metrics_port is None:
            return None
        try:
            return server_metrics.scrape(target.metrics_port)
        except (OSError, ValueError) as exc:
            self.log.say(f"  {target.name} metrics not read ({exc!r}): no CPU split for this cell")
            return None
