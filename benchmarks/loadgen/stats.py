"""Latency percentiles and a log-spaced histogram from raw nanosecond samples."""

from __future__ import annotations

import numpy as np

from benchmarks.loadgen.spec import LatencySummary

# Histogram bins: log-spaced from 10 µs to 10 s, shared by every run so that
# histograms of different runs can be drawn on one axis.
HIST_EDGES_MS = np.logspace(-2, 4, 121)


def summarize(latencies_ns: np.ndarray) -> LatencySummary:
    """Percentiles (ms) of the samples; an empty summary for no samples."""
    if latencies_ns.size == 0:
        return LatencySummary()
    ms = latencies_ns.astype(np.float64) / 1e6
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    counts, _ = np.histogram(np.clip(ms, HIST_EDGES_MS[0], HIST_EDGES_MS[-1]), HIST_EDGES_MS)
    return LatencySummary(
        count=int(ms.size),
        mean_ms=float(ms.mean()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        p999_ms=float(p999),
        max_ms=float(ms.max()),
        hist_edges_ms=[float(e) for e in HIST_EDGES_MS],
        hist_counts=[int(c) for c in counts],
    )
