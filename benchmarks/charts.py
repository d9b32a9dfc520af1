"""The run's figure: throughput vs sessions, latency histograms, compute limit.

matplotlib is optional (not a dependency of the package): without it the run
writes its JSON and markdown and says that no plot was drawn. The figure only
shows what the tables hold; nothing in it is judged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.cells import cell_key


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput vs sessions, latency histograms, compute limit; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = results.get("cells", [])
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {
        "echo": "tab:gray",
        "handwritten": "tab:orange",
        "seqinfer": "tab:blue",
        "baseline": "tab:cyan",
        "torchserve": "tab:red",
    }
    styles = {"stream": "-", "unary": ":", "many": "--", "torchserve": "-"}

    def series(
        server: str, transport: str, model: str = "bench-gru"
    ) -> tuple[list[int], list[float]]:
        pts = sorted(
            (c["sessions"], c["result"]["steps_per_s"])
            for c in cells
            if c["server"] == server
            and c["transport"] == transport
            and c["model"] == model
            and not c["steps"]
        )
        return [p[0] for p in pts], [p[1] for p in pts]

    def medians(xs: list[int], ys: list[float]) -> tuple[list[int], list[float]]:
        # One point per N: the median repeat (repeats are drawn as faint dots).
        by_n: dict[int, list[float]] = {}
        for x, y in zip(xs, ys, strict=True):
            by_n.setdefault(x, []).append(y)
        ns = sorted(by_n)
        return ns, [sorted(by_n[n])[(len(by_n[n]) - 1) // 2] for n in ns]

    def draw(ax: Any, xs: list[int], ys: list[float], style: str, color: str, label: str) -> None:
        ax.scatter(xs, ys, color=color, alpha=0.25, s=12)
        mx, my = medians(xs, ys)
        ax.plot(mx, my, style, marker="o", color=color, label=label)

    ax = axes[0][0]
    for server in ("echo", "handwritten", "seqinfer", "baseline"):
        xs, ys = series(server, "stream")
        if xs:
            draw(ax, xs, ys, styles["stream"], colors[server], server)
    _finish(
        ax,
        xscale="log",
        xlabel="concurrent sessions N",
        ylabel="steps/s",
        title="StreamSteps, ping-pong (bench-gru)",
    )

    ax = axes[0][1]
    for server in ("echo", "handwritten", "seqinfer"):
        for transport in ("unary", "many"):
            xs, ys = series(server, transport)
            if xs:
                label = f"{server} {'StepMany' if transport == 'many' else 'unary Step'}"
                draw(ax, xs, ys, styles[transport], colors[server], label)
    _finish(
        ax,
        xscale="log",
        yscale="log",
        xlabel="concurrent sessions N",
        ylabel="steps/s",
        title="unary Step (dotted) and StepMany ≤256/message (dashed)",
    )

    ax = axes[1][0]
    # Histograms at N = 256 (the targets' N), or the largest N this run has;
    # dashed: the TorchServe workload (N sessions x K steps), seqinfer beside it.
    ns = sorted({c["sessions"] for c in cells if c["transport"] == "stream" and not c["steps"]})
    n_hist = 256 if 256 in ns else (ns[-1] if ns else 0)
    wanted = [
        cell_key(s, "stream", "bench-gru", n_hist) for s in ("echo", "handwritten", "seqinfer")
    ]
    wanted += [c["key"] for c in cells if c["steps"] and c["server"] in ("torchserve", "seqinfer")]
    spans: list[tuple[float, float]] = []
    for key in wanted:
        cell = next((c for c in cells if c["key"] == key), None)
        if cell is None or not cell["result"]["latency"]["hist_counts"]:
            continue
        lat = cell["result"]["latency"]
        edges, counts = lat["hist_edges_ms"], lat["hist_counts"]
        total = max(sum(counts), 1)
        ax.stairs(
            [c / total for c in counts],
            edges,
            color=colors[cell["server"]],
            linestyle="--" if cell["steps"] else "-",
            label=key,
        )
        used = [i for i, c in enumerate(counts) if c]
        spans.append((edges[used[0]], edges[used[-1] + 1]))
    if spans:
        ax.set_xlim(min(s[0] for s in spans), max(s[1] for s in spans))
    _finish(
        ax,
        xscale="log",
        xlabel="step latency (ms)",
        ylabel="share of steps",
        title="Latency histograms",
    )

    ax = axes[1][1]
    for model, color in (("bench-gru", "tab:green"), ("bench-gru-large", "tab:purple")):
        pts = [
            (p["batch"], p["steps_per_s"])
            for p in results.get("compute", [])
            if p["model"] == model
        ]
        if pts:
            ax.plot(
                *zip(*pts, strict=True), marker="o", color=color, label=f"compute limit {model}"
            )
    xs, ys = series("seqinfer", "many")
    if xs:
        batch = [min(x, 256) for x in xs]
        ax.scatter(
            batch, ys, color="tab:blue", zorder=3, label="seqinfer StepMany (batch = N ≤ 256)"
        )
    _finish(
        ax,
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="session-steps/s",
        title="Compute limit vs served StepMany",
    )

    meta = results.get("meta", {})
    load = meta.get("load_before", [0.0])[0]
    fig.suptitle(
        f"seqinfer benchmarks, {meta.get('started', '')}, {meta.get('cpus')} cores, "
        f"load {load:.1f} at start"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _finish(ax: Any, **settings: Any) -> None:
    """Scales and titles of one panel, its legend and its grid."""
    ax.set(**settings)
    # Only when something was drawn: an empty legend warns.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
