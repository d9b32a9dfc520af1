"""End to end with a real Prometheus: every dashboard query returns data.

A real seqinfer server (two small models, metrics on an ephemeral loopback
port) and a real Prometheus (Debian's package, scraping every second) run on
127.0.0.1. A load thread drives every path that feeds a metric over raw gRPC:
Step (T = 1, 4 and a long chunk), StepMany, StreamSteps, a token model,
session open/close/fork, idle expiry, LRU eviction, queue-full bursts, invalid
inputs and unknown sessions. Then every PromQL expression of
deploy/grafana/dashboards/seqinfer.json is evaluated through Prometheus' HTTP
API with the template variables substituted, once as "All" and once with one
instance and one model selected, and each must return at least one series
with a number in it. The dashboard's template-variable queries must list
the server and its models.

Set SEQINFER_DASHBOARD_PNG=docs/img/dashboard.png (and, for a longer picture,
SEQINFER_E2E_LOAD_SECONDS=90) to render the dashboard from this run's data
with deploy/grafana/render_dashboard.py.

The load lives in dashboard_load.py, the HTTP API client in prometheus.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.dashboard_load import DENSE, MAX_QUEUE, MAX_SESSIONS, TOKENS, Load
from tests.e2e.prometheus import Prometheus
from tests.serve_process import ChildProcess, free_port
from tests.support import running_server

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "seqinfer.json"
RENDERER = REPO / "deploy" / "grafana" / "render_dashboard.py"

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the `prometheus` binary is not installed (Debian package `prometheus`; "
    "`make test` installs it through scripts/test-services.sh)",
)

SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval);
# 10 s leaves room for a late scrape on a loaded machine.
RATE_INTERVAL = "10s"


@pytest.fixture(scope="module")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[ChildProcess] = []

    def start(target: str) -> Prometheus:
        workdir = tmp_path_factory.mktemp("prometheus")
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_SECONDS}s\n"
            f"  scrape_timeout: {SCRAPE_SECONDS}s\n"
            "scrape_configs:\n"
            "  - job_name: seqinfer\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        process = ChildProcess(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            name="prometheus",
            stop_grace=10,
        )
        started.append(process)
        prom = Prometheus(f"http://127.0.0.1:{port}", process)
        process.wait_for(prom.ready, 30, "prometheus to be ready")
        return prom

    yield start
    for process in started:
        process.close()


# ---------------------------------------------------------------- fixture --


@dataclass
class Stack:
    prometheus: Prometheus
    instance: str
    load: Load
    started_at: float


@pytest.fixture(scope="module")
def stack(prometheus_factory: Any) -> Iterator[Stack]:
    metrics_port = free_port()
    with running_server(
        [DENSE, TOKENS],
        metrics_port=metrics_port,
        max_sessions=MAX_SESSIONS,
        eviction="lru",
        max_queue_size=MAX_QUEUE,
        sweep_interval_seconds=0.2,
    ) as server:
        assert server.server.metrics_port == metrics_port
        instance = f"127.0.0.1:{metrics_port}"
        started_at = time.time()
        load = Load(server.address).start()
        prom = prometheus_factory(instance)
        try:
            # The first scrape becomes queryable after a few seconds; then let the
            # rate window fill with samples taken under load.
            wait_for(lambda: prom.query(f'up{{instance="{instance}"}} == 1'), 30, "first scrape")
            wait_for(
                lambda: prom.query(
                    f'count_over_time(seqinfer_build_info{{instance="{instance}"}}[1m]) >= 8'
                ),
                40,
                "8 scrapes",
            )
            extra = float(os.environ.get("SEQINFER_E2E_LOAD_SECONDS", "0"))
            if extra > 0:
                time.sleep(extra)
            yield Stack(prom, instance, load, started_at)
        finally:
            load.finish()
    if load.failure is not None:
        raise load.failure


def wait_for(probe: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


# ---------------------------------------------------------------- helpers --


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query in the dashboard."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["refId"], target["expr"]))
    return found


def substitute(expr: str, instance: str, model: str) -> str:
    """What Grafana sends: variables replaced ("All" is the variables' allValue, ".*")."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL)
    out = out.replace("$instance", instance).replace("$model", model)
    leftover = re.findall(r"\$\w+", out)
    assert not leftover, f"unsubstituted variables {leftover} in {expr}"
    return out


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


# ------------------------------------------------------------------ tests --


def test_dashboard_has_the_required_panels() -> None:
    titles = " | ".join(t for t, _, _ in dashboard_targets()).lower()
    for needed in (
        "steps / s",
        "requests / s by method",
        "latency",
        "batch size",
        "queue depth",
        "queue wait",
        "sessions by tier",
        "evictions",
        "errors / s by code",
        "slab occupancy",
        "device memory",
    ):
        assert needed in titles, needed
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"instance", "model"} <= names


def test_load_reached_every_path(stack: Stack) -> None:
    """The raw counters behind the panels moved: the data is from real events, not zeros."""
    prom, inst = stack.prometheus, stack.instance

    def total(expr: str) -> float:
        result = prom.query(expr)
        return sum(float(r["value"][1]) for r in result)

    sel = f'instance="{inst}"'
    checks = {
        "dense steps": f'seqinfer_steps_total{{{sel}, model="dense:1"}}',
        "token steps": f'seqinfer_steps_total{{{sel}, model="tokens:1"}}',
        # sum(): the _count series has no `le` label to match the bucket's.
        "long chunks": f"sum(seqinfer_request_timesteps_count{{{sel}}})"
        f' - sum(seqinfer_request_timesteps_bucket{{{sel}, le="16.0"}})',
        "batches": f"seqinfer_scheduler_iterations_total{{{sel}}}",
        "multi-session batches": f"sum(seqinfer_batch_size_count{{{sel}}})"
        f' - sum(seqinfer_batch_size_bucket{{{sel}, le="1.0"}})',
        "Step OK": f'seqinfer_grpc_requests_total{{{sel}, method="Step", code="OK"}}',
        "StepMany": f'seqinfer_grpc_requests_total{{{sel}, method="StepMany"}}',
        "StreamSteps": f'seqinfer_grpc_requests_total{{{sel}, method="StreamSteps"}}',
        "invalid": f'seqinfer_grpc_requests_total{{{sel}, code="INVALID_ARGUMENT"}}',
        "not found": f'seqinfer_grpc_requests_total{{{sel}, code="NOT_FOUND"}}',
        "opened": f"seqinfer_sessions_opened_total{{{sel}}}",
        "closed": f'seqinfer_sessions_ended_total{{{sel}, reason="closed"}}',
        "expired": f'seqinfer_sessions_ended_total{{{sel}, reason="expired"}}',
        "evicted": f'seqinfer_sessions_ended_total{{{sel}, reason="evicted"}}',
        "backpressure": f'seqinfer_rejected_total{{{sel}, reason="backpressure"}}',
        "open sessions": f"seqinfer_sessions{{{sel}}}",
        "slab used": f"seqinfer_state_slab_used_slots{{{sel}}}",
        "device memory": f"seqinfer_device_memory_allocated_bytes{{{sel}}}",
    }
    zero = [name for name, expr in checks.items() if total(expr) <= 0]
    assert not zero, f"no events reached: {zero}; load outcomes: {dict(stack.load.outcomes)}"


def _check_all_targets(stack: Stack, instance: str, model: str) -> None:
    empty = []
    for title, ref, expr in dashboard_targets():
        promql = substitute(expr, instance, model)
        result = stack.prometheus.query(promql)
        if not has_number(result):
            empty.append(f"{title} [{ref}]: {promql} -> {result}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


def test_every_dashboard_query_returns_data_for_all(stack: Stack) -> None:
    _check_all_targets(stack, instance=".*", model=".*")


def grafana_regex_value(value: str) -> str:
    """A selected variable value as Grafana writes it into a PromQL string literal.

    Regex metacharacters are escaped with a backslash, and the backslash itself is
    doubled because the expression is a (Go-escaped) PromQL string.
    """
    return re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def test_every_dashboard_query_returns_data_for_one_instance_and_model(stack: Stack) -> None:
    _check_all_targets(
        stack, instance=grafana_regex_value(stack.instance), model=grafana_regex_value("dense:1")
    )


def test_template_variable_queries_list_the_server_and_models(stack: Stack) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name, expected in (("instance", {stack.instance}), ("model", {"dense:1", "tokens:1"})):
        query = variables[name]["query"]["query"]
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert m, query
        selector, label = m.group(1), m.group(2)
        selector = selector.replace("$instance", ".*")
        values = {s[label] for s in stack.prometheus.series(selector) if label in s}
        assert expected <= values, (name, query, values)


@pytest.mark.skipif(
    not os.environ.get("SEQINFER_DASHBOARD_PNG"), reason="set SEQINFER_DASHBOARD_PNG to render"
)
def test_render_dashboard_png(stack: Stack) -> None:
    out = Path(os.environ["SEQINFER_DASHBOARD_PNG"])
    subprocess.run(
        [
            sys.executable,
            str(RENDERER),
            "--prometheus",
            stack.prometheus.url,
            "--start",
            str(stack.started_at),
            "--end",
            str(time.time()),
            "--rate-interval",
            RATE_INTERVAL,
            "--out",
            str(out),
        ],
        check=True,
        timeout=120,
    )
    assert out.stat().st_size > 10_000
