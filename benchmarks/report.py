"""Turn one run's results into target ratios, markdown tables and a plot.

Every target is a ratio (or a difference) of two figures measured in the same
run, so a slow or busy machine moves both sides together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 2**20


@dataclass
class TargetCheck:
    name: str
    measured: str
    required: str
    # True/False, or None when a side was not measured in this run.
    met: bool | None
    value: float | None = None
    # "target" (from the issue) or "context" (a reference figure, e.g. how far
    # the transport limit itself is from a target).
    kind: str = "target"


def _cell(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The cell with this key; with --repeat, the repeat of median throughput."""
    matches = [c for c in results.get("cells", []) if c["key"] == key]
    if not matches:
        return None
    matches.sort(key=lambda c: c["result"]["steps_per_s"])
    return dict(matches[(len(matches) - 1) // 2])


def _rate(cell: dict[str, Any] | None) -> float | None:
    return cell["result"]["steps_per_s"] if cell else None


def _lat(cell: dict[str, Any] | None, field: str) -> float | None:
    return cell["result"]["latency"][field] if cell else None


def _compute(results: dict[str, Any], model: str, batch: int) -> float | None:
    for point in results.get("compute", []):
        if point["model"] == model and point["batch"] == batch:
            return float(point["steps_per_s"])
    return None


def _ratio_check(
    name: str, top: float | None, bottom: float | None, at_least: float, detail: str
) -> TargetCheck:
    if not top or not bottom:
        return TargetCheck(name, "not measured", f"≥ {at_least:g}x", None)
    ratio = top / bottom
    return TargetCheck(
        name,
        f"{ratio:.2f}x ({detail.format(top=top, bottom=bottom)})",
        f"≥ {at_least:g}x",
        ratio >= at_least,
        ratio,
    )


def targets(results: dict[str, Any]) -> list[TargetCheck]:
    """Every target of issue 5, from one run's results."""
    m = "bench-gru"
    checks: list[TargetCheck] = []
    si = lambda t, n, model=m, k=0: _cell(  # noqa: E731
        results, f"seqinfer/{t}/{model}/N{n}" + (f"/K{k}" if k else "")
    )
    echo256 = _cell(results, f"echo/stream/{m}/N256")
    hw256 = _cell(results, f"handwritten/stream/{m}/N256")
    hw256_large = _cell(results, "handwritten/stream/bench-gru-large/N256")
    rate_detail = "{top:,.0f} vs {bottom:,.0f} steps/s"
    checks.append(
        _ratio_check(
            "StreamSteps N=256 vs transport limit (echo)",
            _rate(si("stream", 256)),
            _rate(echo256),
            0.7,
            rate_detail,
        )
    )
    checks.append(
        _ratio_check(
            "vs hand-written, bench-gru, StreamSteps N=256",
            _rate(si("stream", 256)),
            _rate(hw256),
            1.5,
            rate_detail,
        )
    )
    checks.append(
        _ratio_check(
            "vs hand-written, bench-gru-large, StreamSteps N=256",
            _rate(si("stream", 256, "bench-gru-large")),
            _rate(hw256_large),
            5.0,
            rate_detail,
        )
    )
    checks.append(
        _ratio_check(
            "StepMany (256 sessions/message) vs compute limit at batch 256",
            _rate(si("many", 256)),
            _compute(results, m, 256),
            0.5,
            rate_detail,
        )
    )
    # Light load: a difference of medians, not a ratio.
    p50, echo_p50 = (
        _lat(si("stream", 1), "p50_ms"),
        _lat(_cell(results, f"echo/stream/{m}/N1"), "p50_ms"),
    )
    if p50 is None or echo_p50 is None:
        checks.append(
            TargetCheck("N=1 ping-pong p50 vs transport p50", "not measured", "≤ +0.5 ms", None)
        )
    else:
        extra = p50 - echo_p50
        checks.append(
            TargetCheck(
                "N=1 ping-pong p50 vs transport p50",
                f"{p50:.3f} ms vs {echo_p50:.3f} ms (+{extra:.3f} ms)",
                "≤ +0.5 ms",
                extra <= 0.5,
                extra,
            )
        )
    p99, p50_256 = _lat(si("stream", 256), "p99_ms"), _lat(si("stream", 256), "p50_ms")
    if p99 and p50_256:
        tail = p99 / p50_256
        checks.append(
            TargetCheck(
                "StreamSteps N=256 tail: p99 / p50",
                f"{tail:.2f} ({p99:.2f} / {p50_256:.2f} ms)",
                "≤ 5",
                tail <= 5,
                tail,
            )
        )
    else:
        checks.append(TargetCheck("StreamSteps N=256 tail: p99 / p50", "not measured", "≤ 5", None))
    memory = results.get("memory", {})
    idle = memory.get("idle")
    if idle and idle["points"]:
        last = idle["points"][-1]
        per = last["bytes_per_session"]
        checks.append(
            TargetCheck(
                f"RSS per idle session at {last['sessions']:,} sessions",
                f"{per:,.0f} B (state {idle['state_bytes']:,} B)",
                f"≤ {idle['target_bytes']:,.0f} B",
                per <= idle["target_bytes"],
                per,
            )
        )
    else:
        checks.append(
            TargetCheck("RSS per idle session at 1M sessions", "not measured", "≤ 3,584 B", None)
        )
    growth = memory.get("growth")
    if growth:
        checks.append(
            TargetCheck(
                f"RSS growth over {growth['steps']:,} steps",
                f"{growth['growth']:+.1%} ({growth['samples'][0][1] / MIB:,.0f} → "
                f"{growth['samples'][-1][1] / MIB:,.0f} MiB)",
                "≤ +5 %",
                growth["growth"] <= 0.05,
                growth["growth"],
            )
        )
    else:
        checks.append(TargetCheck("RSS growth over 1M steps", "not measured", "≤ +5 %", None))
    plan = results.get("meta", {}).get("plan", {})
    n, k = plan.get("torchserve_sessions", 64), plan.get("torchserve_steps", 500)
    ts = _cell(results, f"torchserve/torchserve/{m}/N{n}/K{k}")
    si_ts = si("stream", n, m, k)
    checks.append(
        _ratio_check(
            f"vs TorchServe steps/s (N={n}, K={k}, ping-pong)",
            _rate(si_ts),
            _rate(ts),
            3.0,
            rate_detail,
        )
    )
    echo_ts = _cell(results, f"echo/stream/{m}/N{n}/K{k}")
    echo_rate, ts_rate = _rate(echo_ts), _rate(ts)
    if echo_ts and ts and echo_rate and ts_rate:
        ceiling = echo_rate / ts_rate
        checks.append(
            TargetCheck(
                f"context: transport limit (echo) vs TorchServe, same workload (N={n}, K={k})",
                f"{ceiling:.2f}x ({echo_rate:,.0f} vs {ts_rate:,.0f} steps/s), p99 "
                f"{_lat(echo_ts, 'p99_ms'):.2f} vs {_lat(ts, 'p99_ms'):.2f} ms",
                "the most any one-step-per-message Python gRPC server gets here",
                None,
                ceiling,
                kind="context",
            )
        )
    ts_p99, si_p99 = _lat(ts, "p99_ms"), _lat(si_ts, "p99_ms")
    if ts_p99 and si_p99:
        share = si_p99 / ts_p99
        checks.append(
            TargetCheck(
                f"p99 vs TorchServe p99 (N={n}, K={k})",
                f"{share:.2f} ({si_p99:.2f} vs {ts_p99:.2f} ms)",
                "≤ 0.33",
                share <= 1 / 3,
                share,
            )
        )
    else:
        checks.append(
            TargetCheck(f"p99 vs TorchServe p99 (N={n}, K={k})", "not measured", "≤ 0.33", None)
        )
    # Imported here: compare builds its checks on this module's TargetCheck.
    from benchmarks import compare

    return checks + compare.targets(results)


# ---------------------------------------------------------------- markdown --


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown(results: dict[str, Any]) -> str:
    """All tables of one run, as markdown."""
    meta = results["meta"]
    out: list[str] = []
    load_before = ", ".join(f"{x:.2f}" for x in meta.get("load_before", []))
    load_after = ", ".join(f"{x:.2f}" for x in meta.get("load_after", []))
    out += [
        f"Run of `{meta.get('command', '')}` at {meta.get('started', '')} (commit "
        f"{meta.get('commit', '?')}, {meta.get('seconds', 0):.0f} s): {meta.get('cpus')} x "
        f"{meta.get('cpu_model', '')}, Python {meta.get('python')}, torch {meta.get('torch')}, "
        f"grpcio {meta.get('grpcio')}. Load average (1/5/15 min) before: {load_before}; "
        f"after: {load_after}.",
        _what_if(meta.get("plan", {})),
        "### Targets",
        "",
        "| target | measured | required | |",
        "|---|---|---|---|",
    ]
    for check in targets(results):
        mark = "" if check.kind == "context" else _mark(check.met)
        out.append(f"| {check.name} | {check.measured} | {check.required} | {mark} |")
    out += [
        "",
        "### Load (client in separate processes, ping-pong: each step waits for its reply)",
        "",
    ]
    out += _load_table(results)
    from benchmarks import compare

    out += compare.markdown(results)
    out += _compute_table(results)
    out += _torchserve_table(results)
    out += _memory_table(results)
    out += _verify_table(results)
    out += _profile_tables(results)
    if results.get("problems"):
        out += ["", "### Problems during the run", ""]
        out += [f"- {p}" for p in results["problems"]]
    return "\n".join(out) + "\n"


def _what_if(plan: dict[str, Any]) -> str:
    """A line saying the seqinfer server ran with non-default flags or environment."""
    args, env = plan.get("seqinfer_args") or [], plan.get("seqinfer_env") or {}
    if not args and not env:
        return ""
    parts = [f"flags `{' '.join(args)}`"] if args else []
    parts += [f"environment `{' '.join(f'{k}={v}' for k, v in env.items())}`"] if env else []
    return f"\n**What-if run:** seqinfer was started with {' and '.join(parts)}.\n"


def _load_table(results: dict[str, Any]) -> list[str]:
    cells = results.get("cells", [])
    repeats: dict[str, list[float]] = {}
    for c in cells:
        repeats.setdefault(c["key"], []).append(c["result"]["steps_per_s"])
    repeated = any(len(v) > 1 for v in repeats.values())
    rows = [
        "| server | transport | model | N | steps/s | "
        + ("range of repeats | " if repeated else "")
        + "p50 ms | p90 ms | p99 ms | p99.9 ms | "
        "errors | server CPU µs/step | engine µs/item | front end µs/msg | front end µs/item | "
        "client cores | vs echo | vs hand-written |",
        "|---|---|---|---:|---:|"
        + ("---:|" if repeated else "")
        + "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in repeats:  # first-run order; one row per cell, the median repeat
        cell = _cell(results, key)
        assert cell is not None
        r = cell["result"]
        lat = r["latency"]
        base = f"{cell['transport']}/{cell['model']}/N{cell['sessions']}"
        if cell["steps"]:
            base += f"/K{cell['steps']}"
        echo = _rate(_cell(results, f"echo/{base}"))
        hw = _rate(_cell(results, f"handwritten/{base}"))
        rate = r["steps_per_s"]
        client_cores = r["client_cpu_s"] / r["seconds"] if r["seconds"] else 0.0
        vs_echo = f"{rate / echo:.2f}x" if echo and cell["server"] != "echo" else ""
        vs_hw = f"{rate / hw:.2f}x" if hw and cell["server"] != "handwritten" else ""
        n = f"{cell['sessions']}" + (f" (K={cell['steps']})" if cell["steps"] else "")
        transport = cell["transport"]
        if transport == "many":
            transport = f"StepMany x{r['spec']['per_message']}"
        spread = ""
        if repeated:
            runs = repeats[key]
            spread = f"{min(runs):,.0f} to {max(runs):,.0f} ({len(runs)}) | "
        split = cell.get("cpu_split")
        parts = (
            f"{split['engine_us_per_item']:.1f} | {split['frontend_us_per_message']:,.0f} | "
            f"{split['frontend_us_per_item']:,.1f}"
            if split
            else " | | "
        )
        rows.append(
            f"| {cell['server']} | {transport} | {cell['model']} | {n} | {rate:,.0f} | {spread}"
            f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
            f"{lat['p999_ms']:.2f} | {r['errors']} | {cell['server_cpu_us_per_step']:,.0f} | "
            f"{parts} | {client_cores:.2f} | {vs_echo} | {vs_hw} |"
        )
    rows += [
        "",
        "With --repeat, each row (and each target) is the repeat of median throughput. "
        "StepMany latencies are per message (all its steps share one). Server CPU µs/step is the "
        "server process's CPU time over the whole cell (warm-up included) divided by the steps it "
        "served. Engine µs/item: CPU time of the threads running the seqinfer server's "
        "`GRUEngine.run` (a probe the harness starts it with; benchmarks/server_metrics.py), over "
        "the items (timesteps) it computed in the cell; front end: the rest of the server's CPU "
        "(gRPC, decode, scheduling, encode, CloseSession calls) per step message, and per item "
        "(a StepMany message carries many). Client cores: CPU seconds the load generator "
        "spent per second of the measured phase (the client shares the machine's cores with "
        "the server).",
    ]
    return rows


def _compute_table(results: dict[str, Any]) -> list[str]:
    points = results.get("compute", [])
    if not points:
        return []
    rows = [
        "",
        f"### Compute limit (engine alone, in-process, {points[0]['threads']} torch thread(s))",
        "",
        "| model | batch | median ms / step | best ms | session-steps/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p['model']} | {p['batch']} | {p['median_ms']:.3f} | {p['best_ms']:.3f} | "
            f"{p['steps_per_s']:,.0f} |"
        )
    return rows


def _torchserve_table(results: dict[str, Any]) -> list[str]:
    info = results.get("torchserve")
    if not info:
        return []
    return [
        "",
        "### TorchServe",
        "",
        f"Start-up {info['startup_s']:.1f} s to a READY worker; RSS idle (JVM + worker) "
        f"{info['rss_idle'] / MIB:,.0f} MiB. Its cells are in the load table "
        "(transport `torchserve` = StreamPredictions2, one stream per session).",
    ]


def _memory_table(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory", {})
    rows: list[str] = []
    idle = memory.get("idle")
    if idle:
        rows += [
            "",
            "### Memory: idle sessions (bench-gru, fresh server)",
            "",
            f"Baseline RSS {idle['baseline_rss'] / MIB:,.0f} MiB; state per session "
            f"{idle['state_bytes']:,} B; target ≤ {idle['target_bytes']:,.0f} B per session; "
            f"{idle['errors']} errors; {idle['seconds']:.0f} s.",
            "",
            "| sessions | RSS MiB | RSS - baseline MiB | bytes / session |",
            "|---:|---:|---:|---:|",
        ]
        for p in idle["points"]:
            rss = p["rss_bytes"] / MIB
            grown = (p["rss_bytes"] - idle["baseline_rss"]) / MIB
            rows.append(
                f"| {p['sessions']:,} | {rss:,.0f} | {grown:,.0f} | {p['bytes_per_session']:,.0f} |"
            )
        rows += [
            "",
            "Every session was opened by a step (`start`), so its state is written, not a "
            "zero page. Below ~100k sessions the growth (tens of MiB) is within what the "
            "allocator and grpc's buffers move by themselves; the per-session figure means "
            "something at 100k and 1M.",
        ]
    growth = memory.get("growth")
    if growth:
        samples = ", ".join(f"{s:,}: {r / MIB:,.0f}" for s, r in growth["samples"])
        rows += [
            "",
            f"### Memory: RSS over {growth['steps']:,} steps ({growth['sessions']} sessions, "
            "StepMany, fresh server)",
            "",
            f"Samples (steps: MiB): {samples}. Growth from the first sample: "
            f"{growth['growth']:+.2%}; {growth['errors']} errors; {growth['seconds']:.0f} s.",
        ]
    return rows


def _verify_table(results: dict[str, Any]) -> list[str]:
    checks = results.get("verify", [])
    if not checks:
        return []
    rows = [
        "",
        "### Outputs vs torch.nn.GRU (same run)",
        "",
        "| server | model | transport | sessions x steps | max abs error | |",
        "|---|---|---|---|---:|---|",
    ]
    for c in checks:
        rows.append(
            f"| {c['server']} | {c['model']} | {c['transport']} | {c['sessions']} x "
            f"{c['steps'] // max(c['sessions'], 1)} | {c['max_abs_err']:.2e} | "
            f"{'ok' if c['ok'] else 'MISMATCH ' + c['error']} |"
        )
    return rows


def _profile_tables(results: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    for key, prof in results.get("profiles", {}).items():
        if prof.get("error"):
            rows += ["", f"### Profile {key}: {prof['error']}"]
            continue
        rate = prof.get("steps_per_s_while_sampled")
        rows += [
            "",
            f"### Profile of the seqinfer server, {key} (py-spy, {prof['samples']:,} samples"
            + (f", {rate:,.0f} steps/s while sampled" if rate else "")
            + ")",
            "",
            "| where | share of samples |",
            "|---|---:|",
        ]
        rows += [f"| {g} | {share:.0%} |" for g, share in prof["groups"].items()]
        rows += ["", "| hottest frames (self) | share |", "|---|---:|"]
        rows += [f"| `{f}` | {share:.1%} |" for f, share in prof["top_self"][:12]]
    return rows


# -------------------------------------------------------------------- plot --


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
    ax.set(
        xscale="log",
        xlabel="concurrent sessions N",
        ylabel="steps/s",
        title="StreamSteps, ping-pong (bench-gru)",
    )
    _legend(ax)
    ax.grid(alpha=0.3)

    ax = axes[0][1]
    for server in ("echo", "handwritten", "seqinfer"):
        for transport in ("unary", "many"):
            xs, ys = series(server, transport)
            if xs:
                label = f"{server} {'StepMany' if transport == 'many' else 'unary Step'}"
                draw(ax, xs, ys, styles[transport], colors[server], label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent sessions N",
        ylabel="steps/s",
        title="unary Step (dotted) and StepMany ≤256/message (dashed)",
    )
    _legend(ax)
    ax.grid(alpha=0.3)

    ax = axes[1][0]
    # Histograms at N = 256 (the targets' N), or the largest N this run has;
    # dashed: the TorchServe workload (N sessions x K steps), seqinfer beside it.
    ns = sorted({c["sessions"] for c in cells if c["transport"] == "stream" and not c["steps"]})
    n_hist = 256 if 256 in ns else (ns[-1] if ns else 0)
    wanted = [f"{s}/stream/bench-gru/N{n_hist}" for s in ("echo", "handwritten", "seqinfer")]
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
    ax.set(
        xscale="log",
        xlabel="step latency (ms)",
        ylabel="share of steps",
        title="Latency histograms",
    )
    _legend(ax)
    ax.grid(alpha=0.3)

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
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="session-steps/s",
        title="Compute limit vs served StepMany",
    )
    _legend(ax)
    ax.grid(alpha=0.3)

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


def _legend(ax: Any) -> None:
    # Only when something was drawn: an empty legend warns.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def targets_dicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [asdict(t) for t in targets(results)]
