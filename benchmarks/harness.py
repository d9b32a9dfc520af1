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

This module is that order, and the servers' lifetimes around it. How one
cell is measured is benchmarks/measure.py; the matrix's order,
benchmarks/interleave.py; the log and the parts' failures,
benchmarks/run_log.py; what the run records about itself,
benchmarks/run_meta.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import baseline, servers, verify
from benchmarks.interleave import matrix_order
from benchmarks.measure import Cell, CellMeter
from benchmarks.plan import Plan
from benchmarks.procs import MIB, load_average
from benchmarks.profiling import Recorder
from benchmarks.run_log import RunLog
from benchmarks.run_meta import run_meta


class Harness:
    """One run of a plan: its servers, its parts in order, and the results they fill in."""

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
        self.log = RunLog(console, self.results["problems"])
        run_id = datetime.now(UTC).strftime("%H%M%S")
        self.meter = CellMeter(plan, self.log, run_id, show_progress)

    # --------------------------------------------------------------- run --

    def run(self, argv: list[str]) -> dict[str, Any]:
        started = time.time()
        self.results["meta"] = run_meta(argv, self.plan)
        self.log.say(f"plan {self.plan.name}; load average {load_average()[0]:.2f}")
        if "compute" not in self.skip:
            with self.log.guarded("compute limit"):
                self._compute()
        stack = contextlib.ExitStack()
        try:
            if self.plan.baseline_ref:
                with self.log.guarded(f"baseline checkout of {self.plan.baseline_ref}"):
                    self._checkout_baseline(stack)
            self._start_servers()
            if self.plan.verify:
                self._verify()
            with self.log.guarded("load matrix"):
                self._matrix()
            with self.log.guarded("bench-gru-large"):
                self._large()
            if "torchserve" not in self.skip and self.plan.torchserve_sessions:
                with self.log.guarded("torchserve"):
                    self._torchserve()
            if "profile" not in self.skip:
                with self.log.guarded("profile"):
                    self._profiles()
            if "memory" not in self.skip and not self.plan.memory_fresh_server:
                with self.log.guarded("memory"):
                    self._memory()
        finally:
            self._stop_servers()
            with self.log.guarded("baseline checkout removal"):
                stack.close()
        if "memory" not in self.skip and self.plan.memory_fresh_server:
            with self.log.guarded("memory"):
                self._memory()
        meta = self.results["meta"]
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["seconds"] = round(time.time() - started, 1)
        meta["load_after"] = load_average()
        return self.results

    # ----------------------------------------------------------- compute --

    def _compute(self) -> None:
        from benchmarks.scenarios.compute import measure_engine
        from seqinfer.service.config import load_settings, torch_thread_count
        from seqinfer.service.models import builtin

        # The same intra-op thread count `seqinfer serve` uses by default.
        threads = torch_thread_count(load_settings())
        self.log.say(f"compute limit: engine alone, torch threads {threads}")
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
        self.log.say(f"baseline {tree.ref} = {tree.commit[:10]} ({tree.subject}) at {tree.path}")

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
            with self.log.guarded(f"start {name}"):
                target = self.targets[name] = future.result()
                self.log.say(f"{name} up at {target.address} (PID {target.pid})")

    def _stop_servers(self) -> None:
        for name, target in list(self.targets.items()):
            with self.log.guarded(f"stop {name}"):
                target.stop()
            del self.targets[name]

    def _verify(self) -> None:
        for name in ("handwritten", "seqinfer", "baseline"):
            target = self.targets.get(name)
            if target is None:
                continue
            models = ["bench-gru"] + (["bench-gru-large"] if self.plan.large_sessions else [])
            for model in models:
                with self.log.guarded(f"verify {name} {model}"):
                    for check in verify.verify_seqinfer_contract(name, target.address, model):
                        self._record_check(check, model)

    def _record_check(self, check: verify.Check, model: str) -> None:
        data = check.to_dict()
        data["model"] = model
        self.results["verify"].append(data)
        mark = "[green]ok[/green]" if check.ok else "[red]MISMATCH[/red]"
        self.log.say(
            f"verify {check.server} {model} {check.transport}: max |err| "
            f"{check.max_abs_err:.2e} {mark} {check.error}"
        )

    # -------------------------------------------------------------- load --

    def cell(
        self,
        server: str,
        transport: str,
        model: str,
        sessions: int,
        steps: int = 0,
        record: bool = True,
    ) -> Cell | None:
        """Measure one cell against a running server; None if it is not running or failed."""
        target = self.targets.get(server)
        if target is None:
            return None
        cell = self.meter.measure(server, target, transport, model, sessions, steps)
        if cell is not None and record:
            self.results["cells"].append(asdict(cell))
        return cell

    def _matrix(self) -> None:
        plan = self.plan
        running = [s for s in self._server_names() if s in self.targets]
        for server, transport, sessions in matrix_order(
            running, plan.sessions, plan.transports, plan.repeat
        ):
            self.cell(server, transport, "bench-gru", sessions)

    def _large(self) -> None:
        for sessions in self.plan.large_sessions:
            for server in ("handwritten", "seqinfer", "baseline"):
                self.cell(server, "stream", "bench-gru-large", sessions)

    def _torchserve(self) -> None:
        from benchmarks.peers.torchserve import peer

        sessions, steps = self.plan.torchserve_sessions, self.plan.torchserve_steps
        self.log.say("torchserve: setup (venv, .mar, stubs) if needed, then start")
        peer.setup()
        target = servers.start_torchserve()
        self.targets["torchserve"] = target
        try:
            self.log.say(
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
            self.log.say(f"profiling {key} with py-spy for {seconds:.0f} s (not a measured cell)")
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
                self.log.say(f"  py-spy: {profile.error}")

    # ------------------------------------------------------------ memory --

    def _memory(self) -> None:
        from benchmarks.scenarios import memory

        plan = self.plan
        if plan.idle_checkpoints:
            target = self._memory_server("seqinfer-idle")
            try:
                self.log.say(f"memory: idle sessions up to {max(plan.idle_checkpoints):,}")
                idle = asyncio.run(
                    memory.idle_sessions(target.address, target.rss, plan.idle_checkpoints)
                )
                self.results["memory"]["idle"] = idle.to_dict()
                for point in idle.points:
                    self.log.say(
                        f"  {point.sessions:,} sessions: RSS {point.rss_bytes / MIB:,.0f} MiB, "
                        f"{point.bytes_per_session:,.0f} B/session "
                        f"(target ≤ {idle.target_bytes:,.0f})"
                    )
            finally:
                if plan.memory_fresh_server:
                    target.stop()
        if plan.growth_steps:
            target = self._memory_server("seqinfer-growth")
            try:
                self.log.say(f"memory: RSS over {plan.growth_steps:,} steps")
                growth = asyncio.run(
                    memory.steady_growth(target.address, target.rss, plan.growth_steps)
                )
                self.results["memory"]["growth"] = growth.to_dict()
                self.log.say(
                    f"  RSS {growth.samples[0][1] / MIB:,.0f} → "
                    f"{growth.samples[-1][1] / MIB:,.0f} MiB ({growth.growth:+.1%}), "
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
