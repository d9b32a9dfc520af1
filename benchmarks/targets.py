"""The issue's targets, checked against one run's results.

Every target is a ratio (or a difference) of two figures measured in the same
run, so a slow or busy machine moves both sides together. A target whose side
was not measured is still listed ("not measured"), so a run that skipped a
part says so instead of dropping a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.cells import compute_rate, find_cell, latency_ms, steps_per_s
from benchmarks.procs import MIB

MODEL = "bench-gru"
LARGE_MODEL = "bench-gru-large"
RATE_DETAIL = "{top:,.0f} vs {bottom:,.0f} steps/s"


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


def ratio_check(
    name: str, top: float | None, bottom: float | None, at_least: float, detail: str
) -> TargetCheck:
    """`top / bottom` must be at least `at_least`; `detail` formats the two sides."""
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


def issue_targets(results: dict[str, Any]) -> list[TargetCheck]:
    """Every target of issue 5, from one run's results."""
    return [
        *_throughput(results),
        *_latency(results),
        *_memory(results),
        *_torchserve(results),
    ]


def _throughput(results: dict[str, Any]) -> list[TargetCheck]:
    seqinfer256 = steps_per_s(find_cell(results, "seqinfer", "stream", MODEL, 256))
    return [
        ratio_check(
            "StreamSteps N=256 vs transport limit (echo)",
            seqinfer256,
            steps_per_s(find_cell(results, "echo", "stream", MODEL, 256)),
            0.7,
            RATE_DETAIL,
        ),
        ratio_check(
            "vs hand-written, bench-gru, StreamSteps N=256",
            seqinfer256,
            steps_per_s(find_cell(results, "handwritten", "stream", MODEL, 256)),
            1.5,
            RATE_DETAIL,
        ),
        ratio_check(
            "vs hand-written, bench-gru-large, StreamSteps N=256",
            steps_per_s(find_cell(results, "seqinfer", "stream", LARGE_MODEL, 256)),
            steps_per_s(find_cell(results, "handwritten", "stream", LARGE_MODEL, 256)),
            5.0,
            RATE_DETAIL,
        ),
        ratio_check(
            "StepMany (256 sessions/message) vs compute limit at batch 256",
            steps_per_s(find_cell(results, "seqinfer", "many", MODEL, 256)),
            compute_rate(results, MODEL, 256),
            0.5,
            RATE_DETAIL,
        ),
    ]


def _latency(results: dict[str, Any]) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    # Light load: a difference of medians, not a ratio.
    p50 = latency_ms(find_cell(results, "seqinfer", "stream", MODEL, 1), "p50_ms")
    echo_p50 = latency_ms(find_cell(results, "echo", "stream", MODEL, 1), "p50_ms")
    name = "N=1 ping-pong p50 vs transport p50"
    if p50 is None or echo_p50 is None:
        checks.append(TargetCheck(name, "not measured", "≤ +0.5 ms", None))
    else:
        extra = p50 - echo_p50
        checks.append(
            TargetCheck(
                name,
                f"{p50:.3f} ms vs {echo_p50:.3f} ms (+{extra:.3f} ms)",
                "≤ +0.5 ms",
                extra <= 0.5,
                extra,
            )
        )
    seqinfer256 = find_cell(results, "seqinfer", "stream", MODEL, 256)
    p99, p50_256 = latency_ms(seqinfer256, "p99_ms"), latency_ms(seqinfer256, "p50_ms")
    name = "StreamSteps N=256 tail: p99 / p50"
    if p99 and p50_256:
        tail = p99 / p50_256
        checks.append(
            TargetCheck(name, f"{tail:.2f} ({p99:.2f} / {p50_256:.2f} ms)", "≤ 5", tail <= 5, tail)
        )
    else:
        checks.append(TargetCheck(name, "not measured", "≤ 5", None))
    return checks


def _memory(results: dict[str, Any]) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
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
    return checks


def _torchserve(results: dict[str, Any]) -> list[TargetCheck]:
    plan = results.get("meta", {}).get("plan", {})
    n, k = plan.get("torchserve_sessions", 64), plan.get("torchserve_steps", 500)
    ts = find_cell(results, "torchserve", "torchserve", MODEL, n, k)
    si_ts = find_cell(results, "seqinfer", "stream", MODEL, n, k)
    checks = [
        ratio_check(
            f"vs TorchServe steps/s (N={n}, K={k}, ping-pong)",
            steps_per_s(si_ts),
            steps_per_s(ts),
            3.0,
            RATE_DETAIL,
        )
    ]
    echo_ts = find_cell(results, "echo", "stream", MODEL, n, k)
    echo_rate, ts_rate = steps_per_s(echo_ts), steps_per_s(ts)
    if echo_ts and ts and echo_rate and ts_rate:
        ceiling = echo_rate / ts_rate
        checks.append(
            TargetCheck(
                f"context: transport limit (echo) vs TorchServe, same workload (N={n}, K={k})",
                f"{ceiling:.2f}x ({echo_rate:,.0f} vs {ts_rate:,.0f} steps/s), p99 "
                f"{latency_ms(echo_ts, 'p99_ms'):.2f} vs {latency_ms(ts, 'p99_ms'):.2f} ms",
                "the most any one-step-per-message Python gRPC server gets here",
                None,
                ceiling,
                kind="context",
            )
        )
    ts_p99, si_p99 = latency_ms(ts, "p99_ms"), latency_ms(si_ts, "p99_ms")
    name = f"p99 vs TorchServe p99 (N={n}, K={k})"
    if ts_p99 and si_p99:
        share = si_p99 / ts_p99
        checks.append(
            TargetCheck(
                name,
                f"{share:.2f} ({si_p99:.2f} vs {ts_p99:.2f} ms)",
                "≤ 0.33",
                share <= 1 / 3,
                share,
            )
        )
    else:
        checks.append(TargetCheck(name, "not measured", "≤ 0.33", None))
    return checks
