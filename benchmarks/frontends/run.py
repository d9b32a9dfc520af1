"""One run of the front-end benchmarks: three servers, interleaved cells, then the feeder.

The single-process server, ``--frontends 1`` and ``--frontends 2`` run side
by side for the whole run, each idle while another is measured, so that
every repeat measures the cells a figure compares within seconds of each
other (``figures``). The order rotates per repeat, so no server always runs
first after a pause. The feeder runs last, on its own engine, with the
three servers stopped: it needs the cores for itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.frontends import layout
from benchmarks.frontends.cell import CellResult, measure
from benchmarks.frontends.feeder import Saturation, saturate
from benchmarks.frontends.figures import K1, K1_N1, K2_KERNEL, K2_RR, SINGLE, SINGLE_N1
from benchmarks.loadgen.spec import LoadSpec


@dataclass
class Scale:
    """How long and how big; ``tiny`` is the smoke test's (figures mean nothing there)."""

    sessions: int = 256
    duration: float = 5.0
    warmup: float = 1.5
    repeats: int = 3
    client_procs: int = 2
    # Connections the kernel may spread over the shared port (per client process).
    kernel_channels: int = 4
    record_seconds: float = 3.0
    feed_seconds: float = 4.0
    window: int = 4096


SCALES = {
    "full": Scale(),
    "quick": Scale(duration=3.0, warmup=1.0, repeats=1, record_seconds=2.0, feed_seconds=3.0),
    "tiny": Scale(
        sessions=4, duration=0.3, warmup=0.2, repeats=1, client_procs=1, kernel_channels=2,
        record_seconds=0.5, feed_seconds=0.3, window=64,
    ),
}  # fmt: skip


@dataclass
class RunResult:
    scale: dict[str, Any]
    repeats: list[dict[str, CellResult]] = field(default_factory=list)
    saturation: Saturation | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _spec(scale: Scale, server: layout.Layout, sessions: int, tag: str, **extra: Any) -> LoadSpec:
    return LoadSpec(
        target=server.target.address,
        transport="stream",
        sessions=sessions,
        duration=scale.duration,
        warmup=scale.warmup,
        client_procs=min(scale.client_procs, sessions),
        session_prefix=f"{tag}-{time.monotonic_ns()}",
        **extra,
    )


def _cells(scale: Scale, servers: dict[str, layout.Layout]) -> list[tuple[str, Any]]:
    """(key, thunk returning the LoadSpec and routing) of one repeat, in the base order."""
    n = scale.sessions
    single, k1, k2 = servers["single"], servers["k1"], servers["k2"]
    return [
        (SINGLE, lambda: (single, _spec(scale, single, n, "single"), "")),
        (K1, lambda: (k1, _spec(scale, k1, n, "k1"), "kernel")),
        (SINGLE_N1, lambda: (single, _spec(scale, single, 1, "single1"), "")),
        (K1_N1, lambda: (k1, _spec(scale, k1, 1, "k1n1"), "kernel")),
        (K2_RR, lambda: (k2, _spec(scale, k2, n, "rr", addresses=k2.own_addresses()), "rr")),
        (
            K2_KERNEL,
            lambda: (k2, _spec(scale, k2, n, "kern", channels=scale.kernel_channels), "kernel"),
        ),
    ]


def run(scale: Scale, log_dir: Path, say: Any, show_progress: bool = False) -> RunResult:
    started = time.monotonic()
    result = RunResult(scale=scale.__dict__.copy())
    servers: dict[str, layout.Layout] = {}
    try:
        for name, k in (("single", 0), ("k1", 1), ("k2", 2)):
            servers[name] = layout.start(log_dir, k, name=name)
            say(f"started {name} (--frontends {k})")
        cells = _cells(scale, servers)
        for repeat in range(scale.repeats):
            shift = repeat % len(cells)
            measured: dict[str, CellResult] = {}
            for key, make in cells[shift:] + cells[:shift]:
                server, spec, routing = make()
                try:
                    cell = measure(server, spec, key, routing, show_progress)
                except Exception as exc:  # one failed cell must not lose the run
                    result.problems.append(f"repeat {repeat} {key}: {exc!r}")
                    say(f"  {key}: FAILED {exc!r}")
                    continue
                measured[key] = cell
                if cell.errors:
                    result.problems.append(f"{key}: {cell.errors} errors {cell.error_samples}")
                say(
                    f"  [{repeat}] {key}: {cell.steps_per_s:,.0f} steps/s, p50 "
                    f"{cell.p50_ms:.2f} ms, server {cell.us_per('server', 'item'):.0f} µs/step"
                )
            result.repeats.append(measured)
    finally:
        for server in servers.values():
            server.stop()
    try:
        result.saturation = saturate(
            log_dir, scale.sessions, scale.record_seconds, scale.warmup, scale.feed_seconds,
            scale.window, scale.client_procs,
        )  # fmt: skip
        say(f"feeder: {result.saturation.items_per_s:,.0f} items/s")
    except Exception as exc:
        result.problems.append(f"feeder: {exc!r}")
        say(f"feeder: FAILED {exc!r}")
    result.seconds = time.monotonic() - started
    return result
