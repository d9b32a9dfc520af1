"""The benchmark harness end to end, tiny: it runs and its results are well formed.

Starts the echo, hand-written and seqinfer servers on loopback, drives each
over StreamSteps, unary Step and StepMany for a fraction of a second, checks
the servers' outputs against torch.nn.GRU, and runs the memory code paths;
then the same with a second seqinfer checked out at HEAD (--baseline-ref).
The ratio and CPU-split arithmetic is checked on made-up figures.
Speed is never asserted: figures from a few hundred milliseconds on a shared
machine mean nothing, only that they were measured.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import compare, server_metrics
from benchmarks.cli import main
from benchmarks.interleave import matrix_order
from benchmarks.servers import REPO

pytestmark = pytest.mark.timeout(180)


def test_smoke_run_is_well_formed(tmp_path: Path) -> None:
    code = main(
        [
            "--plan",
            "smoke",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, "a server's outputs mismatched nn.GRU or a part of the run failed"
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["problems"] == []

    cells = {c["key"]: c for c in results["cells"]}
    for server in ("echo", "handwritten", "seqinfer"):
        for transport in ("stream", "unary", "many"):
            cell = cells[f"{server}/{transport}/bench-gru/N4"]
            # Only seqinfer exports the counters its CPU is split by.
            assert (cell["cpu_split"] is not None) == (server == "seqinfer"), cell["key"]
            result = cell["result"]
            assert result["errors"] == 0, result["error_samples"]
            assert result["steps"] > 0 and result["steps_per_s"] > 0
            latency = result["latency"]
            assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
            assert sum(latency["hist_counts"]) == latency["count"]

    checks = results["verify"]
    assert {(c["server"], c["transport"]) for c in checks} >= {
        (s, t) for s in ("handwritten", "seqinfer") for t in ("stream", "unary", "many", "chunk")
    }
    assert all(c["ok"] for c in checks), checks

    assert [p["batch"] for p in results["compute"]] == [1, 4]
    memory = results["memory"]
    assert memory["idle"]["errors"] == 0 and memory["idle"]["points"][0]["sessions"] == 3000
    assert memory["growth"]["errors"] == 0 and memory["growth"]["steps"] >= 4000

    names = {t["name"] for t in results["targets"]}
    assert any("TorchServe" in n for n in names)  # listed even when not measured
    markdown = json_path.with_suffix(".md").read_text()
    assert "### Targets" in markdown and "seqinfer" in markdown


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_baseline_ref_runs_beside_the_current_tree(tmp_path: Path) -> None:
    """--baseline-ref HEAD: a second seqinfer from a temporary checkout, interleaved, compared."""
    code = main(
        [
            "--plan",
            "smoke",
            "--skip",
            "compute,echo,handwritten,memory",
            "--transports",
            "stream,many",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--baseline-ref",
            "HEAD",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, "a server's outputs mismatched nn.GRU or a part of the run failed"
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["problems"] == []

    info = results["meta"]["baseline"]
    assert info["ref"] == "HEAD" and info["commit"] == _git("rev-parse", "HEAD")
    checkout = Path(info["path"])
    # The baseline served its own checkout's code, and the checkout is gone afterwards.
    assert Path(info["module_origin"]).is_relative_to(checkout)
    assert not checkout.exists()
    assert str(checkout) not in _git("worktree", "list")

    assert {c["transport"] for c in results["verify"] if c["server"] == "baseline"} == {
        "stream",
        "unary",
        "many",
        "chunk",
    }
    assert all(c["ok"] for c in results["verify"]), results["verify"]

    cells = {c["key"]: c for c in results["cells"]}
    # Interleaved: each transport's two cells are neighbours in the run.
    order = [c["key"] for c in results["cells"]]
    assert order.index("baseline/stream/bench-gru/N4") in (0, 1)
    for server in ("seqinfer", "baseline"):
        for transport in ("stream", "many"):
            cell = cells[f"{server}/{transport}/bench-gru/N4"]
            assert cell["result"]["errors"] == 0, cell["result"]["error_samples"]
            split = cell["cpu_split"]
            assert split is not None, f"{cell['key']}: no CPU split"
            served = cell["result"]["steps"] + cell["result"]["warmup_steps"]
            # The server computed every step the client counted, and at most the one
            # step per session more that was answered after the measured window.
            assert served <= split["items"] <= served + 4
            per_message = 4 if transport == "many" else 1
            assert split["messages"] * per_message == split["items"]
            assert 0 < split["engine_s"] < split["total_cpu_s"]
            frontend = split["frontend_us_per_item"] * split["items"] / 1e6
            assert split["engine_s"] + frontend == pytest.approx(split["total_cpu_s"])

    rows = {r["cell"]: r for r in results["baseline_comparison"]}
    for transport in ("stream", "many"):
        row = rows[f"{transport}/bench-gru/N4"]
        mine = cells[f"seqinfer/{transport}/bench-gru/N4"]["result"]
        theirs = cells[f"baseline/{transport}/bench-gru/N4"]["result"]
        assert row["ratio"] == pytest.approx(mine["steps_per_s"] / theirs["steps_per_s"])
        want = mine["latency"]["p50_ms"] - theirs["latency"]["p50_ms"]
        assert row["p50_diff_ms"] == pytest.approx(want)
    names = {t["name"] for t in results["targets"]}
    assert "vs baseline, StreamSteps N=1 p50" in names
    markdown = json_path.with_suffix(".md").read_text()
    assert "### seqinfer vs baseline (HEAD = " in markdown


def test_baseline_ref_naming_no_commit_stops_before_any_server(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="names no commit"):
        main(["--plan", "smoke", "--baseline-ref", "no-such-ref-3f9c", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_load_matrix_keeps_compared_cells_together_and_rotates_who_goes_first() -> None:
    order = list(matrix_order(["echo", "hw", "si"], (1, 64), ("stream", "unary"), repeat=2))
    assert len(order) == 3 * 2 * 2 * 2
    blocks = [order[i : i + 3] for i in range(0, len(order), 3)]
    for block in blocks:
        # One workload per block, every server once: neighbours in time.
        assert sorted(s for s, _, _ in block) == ["echo", "hw", "si"]
        assert len({(t, n) for _, t, n in block}) == 1
    assert [b[0][0] for b in blocks] == ["echo", "hw", "si", "echo", "hw", "si", "echo", "hw"]
    workloads = [(t, n) for _, t, n in (b[0] for b in blocks)]
    assert workloads == [("stream", 1), ("unary", 1), ("stream", 64), ("unary", 64)] * 2


def _cell(server: str, transport: str, n: int, rate: float, p50: float) -> dict[str, Any]:
    return {
        "key": f"{server}/{transport}/bench-gru/N{n}",
        "server": server,
        "transport": transport,
        "model": "bench-gru",
        "sessions": n,
        "steps": 0,
        "server_cpu_us_per_step": 100.0,
        "cpu_split": None,
        "result": {"steps_per_s": rate, "latency": {"p50_ms": p50, "p99_ms": 2 * p50}},
    }


def test_baseline_ratio_is_the_median_of_side_by_side_pairs() -> None:
    # Three repeats; the machine slows down over the run, both servers with it.
    cells = [
        _cell("seqinfer", "stream", 1, 1000, 1.00),
        _cell("baseline", "stream", 1, 1000, 0.90),
        _cell("baseline", "stream", 1, 500, 2.00),
        _cell("seqinfer", "stream", 1, 480, 2.10),
        _cell("seqinfer", "stream", 1, 800, 1.20),
        _cell("baseline", "stream", 1, 900, 1.10),
        _cell("seqinfer", "unary", 64, 990, 50.0),
        _cell("baseline", "unary", 64, 1000, 49.0),
        _cell("echo", "unary", 64, 5000, 9.0),
    ]
    results = {"meta": {"baseline": {"ref": "HEAD~1"}}, "cells": cells}
    (stream, unary) = compare.pairs(results)
    assert stream.cell == "stream/bench-gru/N1" and stream.pairs == 3
    # Pair ratios 1.0, 0.96, 0.889: their median, not the ratio of medians (800 / 900).
    assert stream.ratio == pytest.approx(0.96)
    assert (stream.ratio_min, stream.ratio_max) == pytest.approx((800 / 900, 1.0))
    assert stream.p50_diff_ms == pytest.approx(0.10)
    assert unary.ratio == pytest.approx(0.99)

    checks = {c.name: c for c in compare.targets(results)}
    assert checks["vs baseline, StreamSteps N=1, steps/s"].met is True
    assert checks["vs baseline, unary Step N=64, steps/s"].met is True
    # p50 0.10 ms worse than the baseline: over the 0.05 ms bound.
    assert checks["vs baseline, StreamSteps N=1 p50"].met is False
    assert checks["vs baseline, StreamSteps N=64, steps/s"].met is None
    # Without a baseline in the run there are no baseline targets at all.
    assert compare.targets({"meta": {}, "cells": cells}) == []


def test_cpu_split_takes_the_probe_for_engine_cpu_not_batch_wall_time() -> None:
    # StepMany: the batches' wall time (2 s) is inflated by the event loop's other
    # work; the probe's CPU in the engine (0.5 s) is the engine's share.
    before = server_metrics.Reading(items=100, calls={"StepMany": 10}, engine_cpu_s=1.0)
    after = server_metrics.Reading(
        compute_seconds=2.0, items=100 + 6400, calls={"StepMany": 110}, engine_cpu_s=1.5
    )
    split = server_metrics.split(before, after, cpu_s=1.3, transport="many")
    assert split is not None
    assert (split.items, split.messages) == (6400, 100)
    assert split.engine_s == pytest.approx(0.5) and split.batch_wall_s == pytest.approx(2.0)
    assert split.engine_us_per_item == pytest.approx(0.5 / 6400 * 1e6)
    assert split.frontend_us_per_message == pytest.approx(8000.0)
    assert split.frontend_us_per_item == pytest.approx(125.0)
    # StreamSteps: one item per message, the server's call counter notwithstanding.
    stream = server_metrics.split(before, after, cpu_s=1.3, transport="stream")
    assert stream is not None and stream.messages == stream.items == 6400
    # A server without the probe (e.g. an older baseline tree): no split at all.
    unprobed = server_metrics.Reading(items=6500, calls={"StepMany": 110})
    assert server_metrics.split(before, unprobed, cpu_s=1.3, transport="many") is None


def test_metrics_exposition_is_read_summed_over_models() -> None:
    text = "\n".join(
        [
            "# TYPE seqinfer_steps counter",
            'seqinfer_steps_total{model="bench-gru:1"} 30.0',
            'seqinfer_steps_total{model="other:1"} 12.0',
            "# TYPE seqinfer_batch_compute_seconds histogram",
            'seqinfer_batch_compute_seconds_bucket{le="+Inf",model="bench-gru:1"} 7.0',
            'seqinfer_batch_compute_seconds_count{model="bench-gru:1"} 7.0',
            'seqinfer_batch_compute_seconds_sum{model="bench-gru:1"} 0.25',
            "# TYPE seqinfer_bench_engine_cpu_seconds counter",
            "seqinfer_bench_engine_cpu_seconds_total 0.125",
            "# TYPE seqinfer_grpc_requests counter",
            'seqinfer_grpc_requests_total{code="OK",method="StepMany"} 3.0',
            'seqinfer_grpc_requests_total{code="CANCELLED",method="StepMany"} 1.0',
            "",
        ]
    )
    reading = server_metrics.parse(text)
    assert reading.items == 42 and reading.engine_cpu_s == pytest.approx(0.125)
    assert reading.compute_seconds == pytest.approx(0.25)
    assert reading.calls == {"StepMany": 4.0}
    assert server_metrics.parse(text.replace("bench_engine", "other")).engine_cpu_s is None
