"""The overload benchmark's per-session accounting: lost vs applied-unacknowledged."""

from __future__ import annotations

from typing import Any

from benchmarks.scenarios.clients import merge


def _part(
    acked: dict[str, int], applied: dict[str, int], **after: dict[str, int]
) -> dict[str, Any]:
    return {
        "seconds": 2.0,
        "cpu_s": 0.5,
        "sent": 10,
        "unsent": 1,
        "codes": {"OK": 8, "RESOURCE_EXHAUSTED": 2},
        "accepted_ns": [1_000_000, 3_000_000],
        "rejected_ns": [500_000],
        "step_mismatches": 0,
        "acked": acked,
        "applied": applied,
        "recovered": 1,
        "acked_after_recovery": after.get("acked_after", acked),
        "applied_after_recovery": after.get("applied_after", applied),
    }


def test_merge_separates_lost_from_unacknowledged_and_sums_processes() -> None:
    one = _part(
        {"a": 3, "b": 5},
        {"a": 1, "b": 6},
        acked_after={"a": 3, "b": 6},
        applied_after={"a": 1, "b": 6},
    )
    two = _part({"c": 2}, {"c": 2})
    m = merge([one, two])
    assert (m.steps_lost, m.applied_unacknowledged) == (2, 1)
    assert (m.lost_after_recovery, m.unacknowledged_after_recovery) == (2, 0)
    assert m.sessions == 3 and m.recovered == 2
    assert m.codes == {"OK": 16, "RESOURCE_EXHAUSTED": 4}
    assert m.accepted == 4 and m.rejected == 2 and m.accepted_per_s == 2.0
    assert m.rejected_p99_ms == 0.5
