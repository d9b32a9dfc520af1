"""seqinfer vs baseline (``--baseline-ref``): per-cell ratios and the regression targets.

The baseline's cells run next to seqinfer's (same N, same transport, servers
in rotating order), so each repeat gives one side-by-side pair; a figure here
is the median over the pairs of that pair's ratio (or difference), never a
ratio of figures from different moments of the run.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.targets import TargetCheck

# The issue's regression bounds: throughput within 5 %, N=1 latency within 50 µs.
MIN_RATIO = 0.95
MAX_P50_EXTRA_MS = 0.05
# (transport, N) cells whose throughput ratio is a target.
RATIO_CELLS: tuple[tuple[str, int], ...] = (
    ("stream", 1),
    ("stream", 64),
    ("stream", 256),
    ("unary", 64),
)
TRANSPORT_NAMES = {"stream": "StreamSteps", "unary": "unary Step", "many": "StepMany"}


@dataclass
class Pair:
    """seqinfer vs baseline at one cell, over the run's repeats."""

    cell: str  # transport/model/N[/K]
    transport: str
    model: str
    sessions: int
    steps: int
    pairs: int
    # Medians over the repeats of each side's figure.
    seqinfer_steps_per_s: float
    baseline_steps_per_s: float
    seqinfer_p50_ms: float
    baseline_p50_ms: float
    # Medians over the repeats of the pair's ratio or difference.
    ratio: float
    ratio_min: float
    ratio_max: float
    p50_diff_ms: float
    p99_diff_ms: float
    cpu_us_per_step: tuple[float, float]  # (seqinfer, baseline)
    # Engine µs/item and front-end µs/message, (seqinfer, baseline); None unsplit.
    engine_us_per_item: tuple[float, float] | None
    frontend_us_per_message: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _base(cell: dict[str, Any]) -> str:
    return cell["key"].split("/", 1)[1]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _split_pair(si: list[dict[str, Any]], bl: list[dict[str, Any]], field: str) -> Any:
    mine = [c["cpu_split"][field] for c in si if c.get("cpu_split")]
    theirs = [c["cpu_split"][field] for c in bl if c.get("cpu_split")]
    if not mine or not theirs:
        return None
    return (_median(mine), _median(theirs))


def pairs(results: dict[str, Any]) -> list[Pair]:
    """One Pair per cell that both seqinfer and baseline ran, in run order."""
    by_server: dict[str, dict[str, list[dict[str, Any]]]] = {"seqinfer": {}, "baseline": {}}
    for cell in results.get("cells", []):
        if cell["server"] in by_server:
            by_server[cell["server"]].setdefault(_base(cell), []).append(cell)
    out: list[Pair] = []
    for base, si in by_server["seqinfer"].items():
        bl = by_server["baseline"].get(base)
        if not bl:
            continue
        # The i-th repeat of one side ran beside the i-th of the other.
        matched = list(zip(si, bl))
        ratios = [
            s["result"]["steps_per_s"] / b["result"]["steps_per_s"]
            for s, b in matched
            if b["result"]["steps_per_s"]
        ]
        if not ratios:
            continue

        def diff(field: str, both: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
            return _median(
                [s["result"]["latency"][field] - b["result"]["latency"][field] for s, b in both]
            )

        first = si[0]
        out.append(
            Pair(
                cell=base,
                transport=first["transport"],
                model=first["model"],
                sessions=first["sessions"],
                steps=first["steps"],
                pairs=len(matched),
                seqinfer_steps_per_s=_median([c["result"]["steps_per_s"] for c in si]),
                baseline_steps_per_s=_median([c["result"]["steps_per_s"] for c in bl]),
                seqinfer_p50_ms=_median([c["result"]["latency"]["p50_ms"] for c in si]),
                baseline_p50_ms=_median([c["result"]["latency"]["p50_ms"] for c in bl]),
                ratio=_median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                p50_diff_ms=diff("p50_ms", matched),
                p99_diff_ms=diff("p99_ms", matched),
                cpu_us_per_step=(
                    _median([c["server_cpu_us_per_step"] for c in si]),
                    _median([c["server_cpu_us_per_step"] for c in bl]),
                ),
                engine_us_per_item=_split_pair(si, bl, "engine_us_per_item"),
                frontend_us_per_message=_split_pair(si, bl, "frontend_us_per_message"),
            )
        )
    return out


def _find(found: list[Pair], transport: str, sessions: int) -> Pair | None:
    wanted = (transport, "bench-gru", sessions, 0)
    for pair in found:
        if (pair.transport, pair.model, pair.sessions, pair.steps) == wanted:
            return pair
    return None


def targets(results: dict[str, Any]) -> list[TargetCheck]:
    """The regression targets; none unless the run had a baseline."""
    info = results.get("meta", {}).get("baseline")
    if not info:
        return []
    found = pairs(results)
    checks: list[TargetCheck] = []
    required = f"≥ {MIN_RATIO:g}x"
    for transport, sessions in RATIO_CELLS:
        name = f"vs baseline, {TRANSPORT_NAMES[transport]} N={sessions}, steps/s"
        pair = _find(found, transport, sessions)
        if pair is None:
            checks.append(TargetCheck(name, "not measured", required, None))
            continue
        checks.append(
            TargetCheck(
                name,
                f"{pair.ratio:.3f}x ({pair.seqinfer_steps_per_s:,.0f} vs "
                f"{pair.baseline_steps_per_s:,.0f} steps/s{_spread(pair)})",
                required,
                pair.ratio >= MIN_RATIO,
                pair.ratio,
            )
        )
    name = "vs baseline, StreamSteps N=1 p50"
    required = f"≤ +{MAX_P50_EXTRA_MS:g} ms"
    pair = _find(found, "stream", 1)
    if pair is None:
        checks.append(TargetCheck(name, "not measured", required, None))
    else:
        checks.append(
            TargetCheck(
                name,
                f"{pair.p50_diff_ms:+.3f} ms ({pair.seqinfer_p50_ms:.3f} vs "
                f"{pair.baseline_p50_ms:.3f} ms)",
                required,
                pair.p50_diff_ms <= MAX_P50_EXTRA_MS,
                pair.p50_diff_ms,
            )
        )
    return checks


def _spread(pair: Pair) -> str:
    if pair.pairs < 2:
        return ""
    return f"; pairs {pair.ratio_min:.2f} to {pair.ratio_max:.2f}"


def _two(values: tuple[float, float] | None, digits: int = 0) -> str:
    if values is None:
        return ""
    return f"{values[0]:,.{digits}f} / {values[1]:,.{digits}f}"


def markdown(results: dict[str, Any]) -> list[str]:
    """The seqinfer-vs-baseline table; nothing unless the run had a baseline."""
    info = results.get("meta", {}).get("baseline")
    if not info:
        return []
    rows = [
        "",
        f"### seqinfer vs baseline ({info['ref']} = {info['commit'][:10]}: {info['subject']})",
        "",
        "| transport | model | N | steps/s seqinfer | steps/s baseline | ratio | "
        "p50 ms seqinfer | p50 diff ms | p99 diff ms | CPU µs/step (s / b) | "
        "engine µs/item (s / b) | front end µs/msg (s / b) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pairs(results):
        n = f"{p.sessions}" + (f" (K={p.steps})" if p.steps else "")
        ratio = f"{p.ratio:.3f}x" + (
            f" ({p.ratio_min:.2f} to {p.ratio_max:.2f})" if p.pairs > 1 else ""
        )
        rows.append(
            f"| {TRANSPORT_NAMES.get(p.transport, p.transport)} | {p.model} | {n} | "
            f"{p.seqinfer_steps_per_s:,.0f} | {p.baseline_steps_per_s:,.0f} | {ratio} | "
            f"{p.seqinfer_p50_ms:.3f} | {p.p50_diff_ms:+.3f} | {p.p99_diff_ms:+.3f} | "
            f"{_two(p.cpu_us_per_step)} | {_two(p.engine_us_per_item, 1)} | "
            f"{_two(p.frontend_us_per_message)} |"
        )
    rows += [
        "",
        "Ratio: seqinfer's steps/s over the baseline's in the same repeat, median over the "
        "repeats (their range in brackets); diffs: seqinfer minus baseline, the same way. "
        "s / b: seqinfer's figure / the baseline's, medians of the repeats.",
    ]
    return rows


def rows_dicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in pairs(results)]
