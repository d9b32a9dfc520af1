"""Runs a Plan: every scenario side by side in one run, into one results dict.

Order of a run:
1. compute limit (engine in-process);
2. echo, hand-written and seqinfer servers started together (and, with
   --baseline-ref, seqinfer of that commit as "baseline"), outputs verified
   against nn.GRU;
3. the load matrix, interleaved so that the cells a ratio compares run next
   to each other (for each N, for each transport, each server in turn,
   starting with a different server each time);
4. bench-gru-large (hand-written vs seqinfer);
5. TorchServe vs seqinfer (and the hand-written server) at N, K steps;
6. py-spy profiles of seqinfer (extra runs, so sampling never slows a
   measured cell);
7. memory, each part on a fresh seqinfer server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import baseline, server_metrics, servers, verify
from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadResult, LoadSpec
from benchmarks.plan import Plan
from benchmarks.procs import load_average
from benchmarks.profiling import Recorder

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


def cell_key(server: str, transport: str, model: str, sessions: int, steps: int = 0) -> str:
    tail = f"/K{steps}" if steps else ""
    return f"{server}/{transport}/{model}/N{sessions}{tail}"


class Harness:
    def __init__(
        self,
        plan: Plan,
        work_dir: Path,
        console: Console,
        show_progress: bool = True,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.plan = plan
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.console = console
        self.show_progress = show_progress
        self.skip = skip
        self.targets: dict[str, servers.Target] = {}
        self.baseline: baseline.BaselineTree | None = None
        self.results: dict[str, Any] = {
            "meta": {},
            "compute": [],
            "verify": [],
            "cells": [],
            "profiles": {},
            "memory": {},
            "problems": [],
        }
        self._run_id = datetime.now(UTC).strftime("%H%M%S")
        self._t0 = time.monotonic()

    # ------------------------------------------------------------ helpers --

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        self.console.print(f"[bold]bench[/bold] {elapsed:6.1f}s {message}")

    def problem(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {exc!r}"
        self.results["problems"].append(text)
        self.console.print(f"[red]problem[/red] {text}")
        if os.environ.get("SEQINFER_BENCH_DEBUG"):
            traceback.print_exc()

    @contextlib.contextmanager
    def guarded(self, what: str) -> Iterator[None]:
        """Record a failure of one part and go on with the rest of the run."""
        try:
            yield
        except Exception as exc:
            self.problem(what, exc)

    # --------------------------------------------------------------- run --

    def run(self, argv: list[str]) -> dict[str, Any]:
        started = time.time()
        self.results["meta"] = self._meta(argv)
        self.say(f"plan {self.plan.name}; load average {load_average()[0]:.2f}")
        if "compute" not in self.skip:
            with self.guarded("compute limit"):
                self._compute()
        stack = contextlib.ExitStack()
        try:
            if self.plan.baseline_ref:
                with self.guarded(f"baseline checkout of {self.plan.baseline_ref}"):
                    self._checkout_baseline(stack)
            self._start_servers()
            if self.plan.verify:
                self._verify()
            with self.guarded("load matrix"):
                self._matrix()
            with self.guarded("bench-gru-large"):
                self._large()
            if "torchserve" not in self.skip and self.plan.torchserve_sessions:
                with self.guarded("torchserve"):
                    self._torchserve()
            if "profile" not in self.skip:
                with self.guarded("profile"):
                    self._profiles()
            if "memory" not in self.skip and not self.plan.memory_fresh_server:
                with self.guarded("memory"):
                    self._memory()
        finally:
            self._stop_servers()
            with self.guarded("baseline checkout removal"):
                stack.close()
        if "memory" not in self.skip and self.plan.memory_fresh_server:
            with self.guarded("memory"):
                self._memory()
        meta = self.results["meta"]
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["seconds"] = round(time.time() - started, 1)
        meta["load_after"] = load_average()
        return self.results

    def _meta(self, argv: list[str]) -> dict[str, Any]:
        import grpc
        import torch

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=servers.REPO,
        ).stdout.strip()
        return {
            "command": " ".join(argv),
            "plan": asdict(self.plan),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_before": load_average(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "grpcio": grpc.__version__,
            "commit": commit,
        }

    # ----------------------------------------------------------- compute --

    def _compute(self) -> None:
        from benchmarks.scenarios.compute import measure_engine
        from seqinfer.service.config import load_settings, torch_thread_count
        from seqinfer.service.models import builtin

        # The same intra-op thread count `seqinfer serve` uses by default.
        threads = torch_thread_count(load_settings())
        self.say(f"compute limit: engine alone, torch threads {threads}")
        points = measure_engine(
            builtin.bench_gru(),
            self.plan.compute_batches,
            threads=threads,
            min_seconds=self.plan.compute_seconds,
        )
        if self.plan.large_sessions:
            batches = tuple(sorted({1, *self.plan.large_sessions}))
            points += measure_engine(
                builtin.bench_gru_large(),
                batches,
                threads=threads,
                min_seconds=self.plan.compute_seconds,
            )
        self.results["compute"] = [p.to_dict() for p in points]

    # ----------------------------------------------------------- servers --

    def _checkout_baseline(self, stack: contextlib.ExitStack) -> None:
        tree = stack.enter_context(
            baseline.checkout(servers.REPO, self.plan.baseline_ref, sys.executable)
        )
        self.baseline = tree
        self.results["meta"]["baseline"] = tree.to_dict()
        self.say(f"baseline {tree.ref} = {tree.commit[:10]} ({tree.subject}) at {tree.path}")

    def _server_names(self) -> list[str]:
        names = [n for n in self.plan.servers if n not in self.skip]
        if self.baseline is not None and "seqinfer" not in self.skip:
            names.append("baseline")
        return names

    def _start_servers(self) -> None:
        plan = self.plan
        starters = {
            "echo": lambda: servers.start_echo(self.log_dir),
            "handwritten": lambda: servers.start_handwritten(self.log_dir),
            "seqinfer": lambda: servers.start_seqinfer(
                self.log_dir, plan.seqinfer_args, env=plan.seqinfer_env
            ),
        }
        if self.baseline is not None:
            root = self.baseline.path
            starters["baseline"] = lambda: servers.start_seqinfer(
                self.log_dir, plan.seqinfer_args, "baseline", plan.seqinfer_env, root
            )
        names = self._server_names()
        # Started together: each spends seconds importing torch or loading models.
        with ThreadPoolExecutor(len(names) or 1) as pool:
            futures = {name: pool.submit(starters[name]) for name in names}
        for name, future in futures.items():
            with self.guarded(f"start {name}"):
                target = self.targets[name] = future.result()
                self.say(f"{name} up at {target.address} (PID {target.pid})")

    def _stop_servers(self) -> None:
        for name, target in list(self.targets.items()):
            with self.guarded(f"stop {name}"):
                target.stop()
            del self.targets[name]

    def _verify(self) -> None:
        for name in ("handwritten", "seqinfer", "baseline"):
            target = self.targets.get(name)
            if target is None:
                continue
            models = ["bench-gru"] + (["bench-gru-large"] if self.plan.large_sessions else [])
            for model in models:
                with self.guarded(f"verify {name} {model}"):
                    for check in verify.verify_seqinfer_contract(name, target.address, model):
                        self._record_check(check, model)

    def _record_check(self, check: verify.Check, model: str) -> None:
        data = check.to_dict()
        data["model"] = model
        self.results["verify"].append(data)
        mark = "[green]ok[/green]" if check.ok else "[red]MISMATCH[/red]"
        self.say(
            f"verify {check.server} {model} {check.transport}: max |err| "
            f"{check.max_abs_err:.2e} {mark} {check.error}"
        )

    # -------------------------------------------------------------- load --

    def _spec(
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
            session_prefix=f"{target.name}-{transport}-{sessions}-{self._run_id}-{time.monotonic_ns()}",
        )

    def cell(
        self,
        server: str,
        transport: str,
        model: str,
        sessions: int,
        steps: int = 0,
        record: bool = True,
    ) -> Cell | None:
        target = self.targets.get(server)
        if target is None:
            return None
        key = cell_key(server, transport, model, sessions, steps)
        spec = self._spec(target, transport, model, sessions, steps)
        load = load_average()[0]
        # Read before the CPU (and after it below), so the scrape's own cost stays outside.
        counters = self._scrape(target)
        cpu_before = target.cpu()
        try:
            result = run_load(spec, show_progress=self.show_progress, label=key)
        except Exception as exc:
            self.problem(key, exc)
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
            result=_slim(result),
            server_cpu_us_per_step=cpu / served * 1e6 if served else 0.0,
            server_rss_after=target.rss(),
            load_before=load,
            cpu_split=split.to_dict() if split else None,
        )
        lat = result.latency
        self.say(
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
            self.say(f"  error samples: {result.error_samples[:3]}")
        if record:
            self.results["cells"].append(asdict(cell))
        return cell

    def _scrape(self, target: servers.Target) -> server_metrics.Reading | None:
        if target.metrics_port is None:
            return None
        try:
            return server_metrics.scrape(target.metrics_port)
        except (OSError, ValueError) as exc:
            self.say(f"  {target.name} metrics not read ({exc!r}): no CPU split for this cell")
            return None

    def _matrix(self) -> None:
        plan = self.plan
        order = [s for s in self._server_names() if s in self.targets]
        turn = 0
        for _ in range(plan.repeat):
            for sessions in plan.sessions:
                for transport in plan.transports:
                    # Rotate who goes first, so no server always runs on the
                    # freshest (or the most tired) machine.
                    rotated = order[turn % len(order) :] + order[: turn % len(order)]
                    turn += 1
                    for server in rotated:
                        self.cell(server, transport, "bench-gru", sessions)

    def _large(self) -> None:
        for sessions in self.plan.large_sessions:
            for server in ("handwritten", "seqinfer", "baseline"):
                self.cell(server, "stream", "bench-gru-large", sessions)

    def _torchserve(self) -> None:
        from benchmarks.peers.torchserve import peer

        sessions, steps = self.plan.torchserve_sessions, self.plan.torchserve_steps
        self.say("torchserve: setup (venv, .mar, stubs) if needed, then start")
        peer.setup()
        target = servers.start_torchserve()
        self.targets["torchserve"] = target
        try:
            self.say(
                f"torchserve up at {target.address} (PID {target.pid}), "
                f"start-up {target.extra['startup_s']} s"
            )
            self.results["torchserve"] = {
                "startup_s": float(target.extra["startup_s"]),
                "rss_idle": target.rss(),
            }
            for check in verify.verify_torchserve(target.address):
                self._record_check(check, "bench-gru")
            # The transport limit on the same workload says how much of any
            # gap is the one-message-per-step protocol itself.
            for server in ("torchserve", "seqinfer", "echo", "handwritten"):
                transport = "torchserve" if server == "torchserve" else "stream"
                self.cell(server, transport, "bench-gru", sessions, steps)
        finally:
            target.stop()
            del self.targets["torchserve"]

    def _profiles(self) -> None:
        target = self.targets.get("seqinfer")
        if target is None:
            return
        for transport, sessions in self.plan.profile_cells:
            key = f"seqinfer/{transport}/N{sessions}"
            out = self.work_dir / "profiles" / f"seqinfer-{transport}-N{sessions}.txt"
            seconds = self.plan.warmup + self.plan.duration
            self.say(f"profiling {key} with py-spy for {seconds:.0f} s (not a measured cell)")
            # Python frames only, sampled without pausing the server (native
            # sampling pauses it per sample and slowed it ~4x here). grpc.aio's
            # Cython code is invisible then: its time shows as the event
            # loop's Handle._run.
            recorder = Recorder(target.pid, seconds, out)
            cell = self.cell("seqinfer", transport, "bench-gru", sessions, record=False)
            profile = recorder.finish()
            data = profile.to_dict()
            if cell is not None:
                data["steps_per_s_while_sampled"] = cell.result["steps_per_s"]
            self.results["profiles"][key] = data
            if profile.error:
                self.say(f"  py-spy: {profile.error}")

    # ------------------------------------------------------------ memory --

    def _memory(self) -> None:
        from benchmarks.scenarios import memory

        plan = self.plan
        if plan.idle_checkpoints:
            target = self._memory_server("seqinfer-idle")
            try:
                self.say(f"memory: idle sessions up to {max(plan.idle_checkpoints):,}")
                idle = asyncio.run(
                    memory.idle_sessions(target.address, target.rss, plan.idle_checkpoints)
                )
                self.results["memory"]["idle"] = idle.to_dict()
                for point in idle.points:
                    self.say(
                        f"  {point.sessions:,} sessions: RSS {point.rss_bytes / 2**20:,.0f} MiB, "
                        f"{point.bytes_per_session:,.0f} B/session "
                        f"(target ≤ {idle.target_bytes:,.0f})"
                    )
            finally:
                if plan.memory_fresh_server:
                    target.stop()
        if plan.growth_steps:
            target = self._memory_server("seqinfer-growth")
            try:
                self.say(f"memory: RSS over {plan.growth_steps:,} steps")
                growth = asyncio.run(
                    memory.steady_growth(target.address, target.rss, plan.growth_steps)
                )
                self.results["memory"]["growth"] = growth.to_dict()
                self.say(
                    f"  RSS {growth.samples[0][1] / 2**20:,.0f} → "
                    f"{growth.samples[-1][1] / 2**20:,.0f} MiB ({growth.growth:+.1%}), "
                    f"errors {growth.errors}"
                )
            finally:
                if plan.memory_fresh_server:
                    target.stop()

    def _memory_server(self, name: str) -> servers.Target:
        if self.plan.memory_fresh_server:
            return servers.start_seqinfer(
                self.log_dir, self.plan.seqinfer_args, name=name, env=self.plan.seqinfer_env
            )
        target = self.targets.get("seqinfer")
        if target is None:
            raise RuntimeError("no seqinfer server for the memory scenario")
        return target


def _slim(result: LoadResult) -> dict[str, Any]:
    return result.to_dict()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def default_work_dir() -> Path:
    return servers.REPO / "benchmarks" / "results" / "tmp"


def python_argv() -> list[str]:
    return [Path(sys.executable).name, *sys.argv]
