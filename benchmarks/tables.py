"""The markdown tables of one run's measured figures, one function per part of the run.

Each returns its lines (empty when the run did not measure that part), so
the report lists every part in a fixed order and a skipped part leaves no
empty heading. The targets table and the seqinfer-vs-baseline table are
elsewhere: they judge figures (benchmarks/targets.py, benchmarks/compare.py);
these only show them.
"""

from __future__ import annotations

from typing import Any

from benchmarks.cells import find_cell, median_repeat, steps_per_s
from benchmarks.procs import MIB


def load_table(results: dict[str, Any]) -> list[str]:
    """The load matrix: one row per cell (its median repeat), beside echo and hand-written."""
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
        cell = median_repeat(results, key)
        assert cell is not None
        r = cell["result"]
        lat = r["latency"]
        workload = (cell["transport"], cell["model"], cell["sessions"], cell["steps"])
        echo = steps_per_s(find_cell(results, "echo", *workload))
        hw = steps_per_s(find_cell(results, "handwritten", *workload))
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


def compute_table(results: dict[str, Any]) -> list[str]:
    """The engine alone, in-process: the most any server could serve per batch size."""
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


def torchserve_table(results: dict[str, Any]) -> list[str]:
    """TorchServe's start-up and idle RSS (its load cells are in the load table)."""
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


def memory_table(results: dict[str, Any]) -> list[str]:
    """RSS per idle session, and RSS over many steps."""
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


def verify_table(results: dict[str, Any]) -> list[str]:
    """Each server's outputs against torch.nn.GRU, as measured in this run."""
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


def profile_tables(results: dict[str, Any]) -> list[str]:
    """Where the seqinfer server spent its time, per profiled cell (py-spy)."""
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
