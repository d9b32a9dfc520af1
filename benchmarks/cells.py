"""Cell keys, and reading a cell's figures back out of one run's results.

The harness files every load run under a key (server/transport/model/N[/K]);
the targets, the tables and the plot find cells again by that key. So the
key is spelled in one place, and so is what a key means under --repeat: the
repeat of median throughput, never a mix of repeats.
"""

from __future__ import annotations

from typing import Any


def cell_key(server: str, transport: str, model: str, sessions: int, steps: int = 0) -> str:
    """The key of one load run; `steps` per session, 0 for a fixed duration."""
    tail = f"/K{steps}" if steps else ""
    return f"{server}/{transport}/{model}/N{sessions}{tail}"


def median_repeat(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The cell with this key; with --repeat, the repeat of median throughput."""
    matches = [c for c in results.get("cells", []) if c["key"] == key]
    if not matches:
        return None
    matches.sort(key=lambda c: c["result"]["steps_per_s"])
    return dict(matches[(len(matches) - 1) // 2])


def find_cell(
    results: dict[str, Any], server: str, transport: str, model: str, sessions: int, steps: int = 0
) -> dict[str, Any] | None:
    """The median repeat of this server's run of this workload, if the run had one."""
    return median_repeat(results, cell_key(server, transport, model, sessions, steps))


def steps_per_s(cell: dict[str, Any] | None) -> float | None:
    return cell["result"]["steps_per_s"] if cell else None


def latency_ms(cell: dict[str, Any] | None, field: str) -> float | None:
    """A latency figure, e.g. "p99_ms", of a cell (None without the cell)."""
    return cell["result"]["latency"][field] if cell else None


def compute_rate(results: dict[str, Any], model: str, batch: int) -> float | None:
    """The engine-alone session-steps/s of this model at this batch size."""
    for point in results.get("compute", []):
        if point["model"] == model and point["batch"] == batch:
            return float(point["steps_per_s"])
    return None
