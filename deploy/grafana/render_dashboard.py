#!/usr/bin/env python3
"""Renders the seqinfer dashboard to a PNG from a real Prometheus, without Grafana.

    python deploy/grafana/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --start UNIX_SECONDS --end UNIX_SECONDS --out docs/img/dashboard.png

It reads deploy/grafana/dashboards/seqinfer.json (the file Grafana loads),
runs each panel's PromQL through /api/v1/query_range with the template
variables set to "All", and draws the panels in the dashboard's grid:
time series as lines, stat panels as their last value, the batch-size
heatmap as iterations per bucket over time. It is a picture of the same data,
not a Grafana screenshot (Grafana cannot be installed here).

Needs matplotlib (optional: `pip install matplotlib`; nothing else uses it).
tests/e2e/test_prometheus_dashboard.py runs it when SEQINFER_DASHBOARD_PNG is set.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "seqinfer.json"


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        reply = json.loads(r.read())
    if reply.get("status") != "success":
        raise RuntimeError(f"{expr}: {reply}")
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def substitute(expr: str, rate_interval: str) -> str:
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$instance", ".*")
        .replace("$model", ".*")
    )


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "-"
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale or suffix == "µs":
                return f"{value / scale:.3g} {suffix}"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B")):
            if abs(value) >= scale or suffix == "B":
                return f"{value / scale:.3g} {suffix}"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit in ("ops", "reqps"):
        return f"{value:.4g}/s"
    return f"{value:.4g}"


def _series(result: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[float], list[float]]]:
    out = []
    for r in result:
        ts = [float(t) for t, _ in r["values"]]
        vs = [float(v) for _, v in r["values"]]
        out.append((r["metric"], ts, vs))
    return out


def render(prometheus: str, start: float, end: float, out: Path, rate_interval: str = "1m") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    step = max(1.0, (end - start) / 240)
    fig = plt.figure(figsize=(20, bottom * 0.42), dpi=90)
    fig.patch.set_facecolor("#111217")
    grid = fig.add_gridspec(
        bottom, 24, hspace=2.2, wspace=1.2, left=0.04, right=0.99, top=0.97, bottom=0.02
    )
    text_color = "#ccccdc"
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"] - 1, pos["x"] : pos["x"] + pos["w"]]
        )
        ax.set_facecolor("#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors=text_color, labelsize=7)
        ax.set_title(panel["title"], color=text_color, fontsize=9, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        results = [
            (t, query_range(prometheus, substitute(t["expr"], rate_interval), start, end, step))
            for t in panel["targets"]
        ]
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            last = [
                vs[i]
                for _, r in results
                for _, _, vs in _series(r)
                for i in range(len(vs) - 1, -1, -1)
                if math.isfinite(vs[i])
            ][:1]
            shown = format_value(last[0], unit) if last else "No data"
            ax.text(0.5, 0.45, shown, ha="center", va="center", fontsize=22, color="#73bf69")
            continue
        if panel["type"] == "heatmap":
            _heatmap(ax, results[0][1], start, text_color)
            continue
        plotted = 0
        for target, result in results:
            for metric, ts, vs in _series(result):
                ax.plot(
                    [t - start for t in ts],
                    vs,
                    linewidth=1.2,
                    label=legend(target.get("legendFormat", ""), metric),
                )
                plotted += 1
        if plotted:
            ax.legend(
                fontsize=6,
                loc="upper left",
                framealpha=0.3,
                labelcolor=text_color,
                ncol=2 if plotted > 4 else 1,
            )
        else:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color=text_color)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=unit: format_value(v, u)))
        ax.set_xlabel("seconds", color=text_color, fontsize=7)
        ax.grid(color="#2c3235", linewidth=0.5)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(
        f"seqinfer — rendered from Prometheus data, {when} ({end - start:.0f} s window)",
        color=text_color,
        fontsize=12,
        y=0.995,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor(), bbox_inches="tight")
    plt.close(fig)


def _heatmap(ax: Any, result: list[dict[str, Any]], start: float, text_color: str) -> None:
    """Cumulative `le` buckets per time step → counts per bucket, as Grafana's heatmap does."""
    import numpy as np

    by_le: dict[float, list[float]] = {}
    times: list[float] = []
    for metric, ts, vs in _series(result):
        le = math.inf if metric["le"] == "+Inf" else float(metric["le"])
        by_le[le] = vs
        times = ts
    if not by_le:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=text_color)
        return
    bounds = sorted(by_le)
    n = min(len(v) for v in by_le.values())
    cumulative = np.array([by_le[b][:n] for b in bounds])
    counts = np.diff(np.vstack([np.zeros(n), cumulative]), axis=0)
    counts = np.nan_to_num(counts).clip(min=0)
    ax.imshow(
        counts,
        aspect="auto",
        origin="lower",
        cmap="Blues",
        extent=(times[0] - start, times[n - 1] - start, 0, len(bounds)),
    )
    ax.set_yticks([i + 0.5 for i in range(len(bounds))])
    ax.set_yticklabels(["+Inf" if math.isinf(b) else f"≤{b:g}" for b in bounds], fontsize=6)
    ax.set_xlabel("seconds", color=text_color, fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the seqinfer dashboard to PNG.")
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--start", type=float, help="unix seconds (default: end - 15 min)")
    parser.add_argument("--end", type=float, help="unix seconds (default: now)")
    parser.add_argument("--rate-interval", default="1m", help="value of $__rate_interval")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    end = args.end or time.time()
    start = args.start or end - 900
    render(args.prometheus.rstrip("/"), start, end, args.out, args.rate_interval)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
