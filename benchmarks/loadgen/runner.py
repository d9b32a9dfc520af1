"""Run a LoadSpec in separate client processes and merge what they measured."""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen.spec import LoadResult, LoadSpec
from benchmarks.loadgen.stats import summarize
from benchmarks.loadgen.worker import worker_main


class LoadError(RuntimeError):
    """A client process failed or the run did not finish in time."""


def split_sessions(spec: LoadSpec) -> list[list[int]]:
    """Session indices per client process, contiguous so StepMany groups stay whole."""
    unit = spec.per_message if spec.transport == "many" else 1
    units = [list(range(k, min(k + unit, spec.sessions))) for k in range(0, spec.sessions, unit)]
    procs = min(spec.client_procs, len(units))
    shares: list[list[int]] = [[] for _ in range(procs)]
    for n, chunk in enumerate(units):
        shares[n * procs // len(units)].extend(chunk)
    return shares


def _progress_total(spec: LoadSpec) -> float | None:
    return None if spec.steps <= 0 else float(spec.steps * spec.sessions)


def _watch(
    spec: LoadSpec,
    procs: Sequence[BaseProcess],
    counters: list[Synchronized],
    show: bool,
    label: str,
    timeout: float,
) -> None:
    """Wait for the processes, drawing a progress bar; kill them on timeout."""
    started = time.monotonic()
    bar: Any = None
    task: Any = None
    if show:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        bar.start()
        planned = spec.warmup + spec.duration
        task = bar.add_task(
            label,
            total=_progress_total(spec) or planned,
            rate="",
        )
    last = (time.monotonic(), 0)
    try:
        while any(p.is_alive() for p in procs):
            if time.monotonic() - started > timeout:
                for p in procs:
                    if p.is_alive():
                        p.kill()
                raise LoadError(f"load run did not finish within {timeout:.0f} s")
            time.sleep(0.2)
            if bar is not None:
                done = sum(int(c.value) for c in counters)
                now = time.monotonic()
                rate = (done - last[1]) / max(now - last[0], 1e-6)
                last = (now, done)
                position = (
                    done if spec.steps > 0 else min(now - started, spec.warmup + spec.duration)
                )
                bar.update(task, completed=position, rate=f"{rate:,.0f} steps/s")
    finally:
        if bar is not None:
            bar.stop()


def _context() -> Any:
    """A forkserver context with the worker module preloaded.

    Client processes start from a clean single-threaded server process that
    has already imported grpc and protobuf, so each load run starts in tens of
    milliseconds instead of re-importing them (spawn), and never inherits the
    orchestrator's threads or torch state (fork).
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.loadgen.worker"])
    return ctx


def run_load(
    spec: LoadSpec,
    show_progress: bool = True,
    label: str = "load",
    timeout: float = 900.0,
) -> LoadResult:
    """Run `spec` in `spec.client_procs` fresh processes; merge their results."""
    spec.validate()
    shares = split_sessions(spec)
    ctx = _context()
    barrier = ctx.Barrier(len(shares))
    counters = [ctx.Value("q", 0, lock=False) for _ in shares]
    with tempfile.TemporaryDirectory(prefix="seqinfer-loadgen-") as tmp:
        paths = [str(Path(tmp) / f"proc{n}") for n in range(len(shares))]
        procs = [
            ctx.Process(
                target=worker_main,
                args=(spec.to_dict(), share, barrier, counter, path),
                daemon=True,
            )
            for share, counter, path in zip(shares, counters, paths, strict=True)
        ]
        for p in procs:
            p.start()
        _watch(spec, procs, counters, show_progress, label, timeout)
        parts: list[dict[str, Any]] = []
        latencies: list[np.ndarray] = []
        for p, path in zip(procs, paths, strict=True):
            p.join()
            info = Path(path).with_suffix(".json")
            if not info.exists():
                raise LoadError(f"client process exited with {p.exitcode} and no result")
            part = json.loads(info.read_text())
            if "fatal" in part:
                raise LoadError(f"client process failed: {part['fatal']}")
            parts.append(part)
            latencies.append(np.load(Path(path).with_suffix(".npy")))
    return _merge(spec, parts, np.concatenate(latencies))


def _merge(spec: LoadSpec, parts: list[dict[str, Any]], latencies: np.ndarray) -> LoadResult:
    ok = sum(p["ok"] for p in parts)
    started = [p["t0"] for p in parts if p["t0"] > 0]
    if not started:
        seconds = 0.0  # every caller failed before the measured phase
    elif spec.steps > 0:
        # A fixed step count: the window runs until the last caller finished.
        seconds = max(p["t_last"] for p in parts) - min(started)
    else:
        seconds = spec.duration
    samples = [s for p in parts for s in p["error_samples"]]
    return LoadResult(
        spec=spec,
        steps=ok,
        seconds=seconds,
        steps_per_s=ok / seconds if seconds > 0 else 0.0,
        errors=sum(p["errors"] for p in parts),
        error_samples=samples[:10],
        latency=summarize(latencies),
        client_cpu_s=sum(p["cpu_s"] for p in parts),
        warmup_steps=sum(p["warmup_steps"] for p in parts),
    )
