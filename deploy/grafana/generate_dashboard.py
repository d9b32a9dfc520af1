#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/seqinfer.json, the seqinfer Grafana dashboard.

    python deploy/grafana/generate_dashboard.py            # rewrite the JSON
    python deploy/grafana/generate_dashboard.py --check    # exit 1 if it is stale

The panels are data here (title, unit, PromQL) so that the JSON's boilerplate
is written once, and so that tests and the PNG renderer read the same list.
Plain dicts, no grafanalib: nothing to install. tests/unit/test_deploy_dashboard.py
checks that the committed JSON equals this output; tests/e2e/test_prometheus_dashboard.py
evaluates every expression against a real Prometheus scraping a real server.

Conventions: every expression filters on ``instance=~"$instance"`` (and, for
per-model series, ``model=~"$model"``) and uses ``$__rate_interval`` for rates,
which Grafana sizes from the data source's scrape interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "seqinfer.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # the provisioned data source's uid

# Label filters shared by every query.
I = 'instance=~"$instance"'  # noqa: E741 - short on purpose: it is in every query
IM = 'instance=~"$instance", model=~"$model"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | heatmap
    width: int = 12
    height: int = 8
    stack: bool = False
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _q(quantile: float, metric: str, by: str = "le, model", labels: str = IM) -> str:
    return (
        f"histogram_quantile({quantile}, sum by ({by}) (rate({metric}_bucket{{{labels}}}[{RI}])))"
    )


ROWS: tuple[Row, ...] = (
    Row(
        "Overview",
        (
            Panel(
                "Steps / s",
                "Timesteps computed per second, all selected models.",
                (Target(f"sum(rate(seqinfer_steps_total{{{IM}}}[{RI}]))", "steps/s"),),
                unit="ops",
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Step latency p99",
                "99th percentile of a step request's time in the server.",
                (Target(_q(0.99, "seqinfer_step_latency_seconds", by="le"), "p99"),),
                unit="s",
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Open sessions",
                "Sessions open on the selected instances and models, every tier.",
                (Target(f"sum(seqinfer_sessions{{{IM}}})", "sessions"),),
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Error ratio",
                "Share of gRPC calls (and stream items) that ended with a status other than OK.",
                (
                    Target(
                        f'(sum(rate(seqinfer_grpc_requests_total{{{I}, code!="OK"}}[{RI}]))'
                        " or vector(0))"
                        f" / sum(rate(seqinfer_grpc_requests_total{{{I}}}[{RI}]))",
                        "errors",
                    ),
                ),
                unit="percentunit",
                kind="stat",
                width=6,
                height=4,
            ),
        ),
    ),
    Row(
        "Throughput",
        (
            Panel(
                "Steps / s by model",
                "Timesteps computed per second (a request of T timesteps counts T).",
                (
                    Target(
                        f"sum by (model) (rate(seqinfer_steps_total{{{IM}}}[{RI}]))",
                        "{{model}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Requests / s by method",
                "gRPC calls per second by method (each stream item counts once).",
                (
                    Target(
                        f"sum by (method) (rate(seqinfer_grpc_requests_total{{{I}}}[{RI}]))",
                        "{{method}}",
                    ),
                ),
                unit="reqps",
            ),
        ),
    ),
    Row(
        "Latency",
        (
            Panel(
                "Step latency (p50 / p90 / p99)",
                "A step request's time in the server, accepted to result ready.",
                tuple(
                    Target(_q(q, "seqinfer_step_latency_seconds"), f"{{{{model}}}} p{int(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                ),
                unit="s",
            ),
            Panel(
                "Queue wait and batch compute (p50 / p99)",
                "Time waiting for a batch to start; time the engine spent on one batch.",
                (
                    Target(_q(0.5, "seqinfer_queue_wait_seconds"), "{{model}} queue p50"),
                    Target(_q(0.99, "seqinfer_queue_wait_seconds"), "{{model}} queue p99"),
                    Target(_q(0.5, "seqinfer_batch_compute_seconds"), "{{model}} compute p50"),
                    Target(_q(0.99, "seqinfer_batch_compute_seconds"), "{{model}} compute p99"),
                ),
                unit="s",
            ),
            Panel(
                "gRPC call duration p99 by method",
                "From a call's (or stream item's) start to its status.",
                (
                    Target(
                        _q(0.99, "seqinfer_grpc_request_duration_seconds", "le, method", I),
                        "{{method}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Queue depth",
                "Step requests accepted and not yet computed.",
                (Target(f"sum by (model) (seqinfer_queue_depth{{{IM}}})", "{{model}}"),),
            ),
        ),
    ),
    Row(
        "Batching",
        (
            Panel(
                "Batch size distribution",
                "Sessions stepped together per scheduler iteration: iterations per bucket.",
                (
                    Target(
                        f"sum by (le) (increase(seqinfer_batch_size_bucket{{{IM}}}[{RI}]))",
                        "{{le}}",
                    ),
                ),
                kind="heatmap",
            ),
            Panel(
                "Mean batch size and iterations / s",
                "Mean sessions per iteration (left) and scheduler iterations per second.",
                (
                    Target(
                        f"sum by (model) (rate(seqinfer_batch_size_sum{{{IM}}}[{RI}]))"
                        f" / sum by (model) (rate(seqinfer_batch_size_count{{{IM}}}[{RI}]))",
                        "{{model}} mean batch",
                    ),
                    Target(
                        f"sum by (model) (rate(seqinfer_scheduler_iterations_total{{{IM}}}[{RI}]))",
                        "{{model}} iterations/s",
                    ),
                ),
            ),
            Panel(
                "Timesteps per request (mean)",
                "Mean T of computed step requests.",
                (
                    Target(
                        f"sum by (model) (rate(seqinfer_request_timesteps_sum{{{IM}}}[{RI}]))"
                        " / sum by (model) ("
                        f"rate(seqinfer_request_timesteps_count{{{IM}}}[{RI}]))",
                        "{{model}}",
                    ),
                ),
            ),
            Panel(
                "In-flight calls",
                "gRPC calls (and stream items) started and not yet finished.",
                (
                    Target(
                        f"sum by (method) (seqinfer_grpc_requests_in_flight{{{I}}})",
                        "{{method}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Sessions",
        (
            Panel(
                "Sessions by tier",
                "Open sessions by where their state lives: device slab, host memory, snapshot.",
                (Target(f"sum by (tier) (seqinfer_sessions{{{IM}}})", "{{tier}}"),),
                stack=True,
            ),
            Panel(
                "Sessions opened and ended / s",
                "Sessions created, and ended by reason (closed, expired, evicted).",
                (
                    Target(
                        f"sum(rate(seqinfer_sessions_opened_total{{{IM}}}[{RI}]))",
                        "opened",
                    ),
                    Target(
                        f"sum by (reason) (rate(seqinfer_sessions_ended_total{{{IM}}}[{RI}]))",
                        "ended: {{reason}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Evictions and expirations",
                "Sessions ended by the server, per interval: evicted for room (LRU) "
                "or expired by idle TTL.",
                (
                    Target(
                        "sum by (model, reason) (increase(seqinfer_sessions_ended_total"
                        f'{{{IM}, reason=~"evicted|expired"}}[{RI}]))',
                        "{{model}} {{reason}}",
                    ),
                ),
            ),
            Panel(
                "State slab occupancy",
                "Used slots over allocated slots of each model's state slab.",
                (
                    Target(
                        f"sum by (model) (seqinfer_state_slab_used_slots{{{IM}}})"
                        f" / sum by (model) (seqinfer_state_slab_capacity_slots{{{IM}}})",
                        "{{model}}",
                    ),
                ),
                unit="percentunit",
            ),
        ),
    ),
    Row(
        "Errors",
        (
            Panel(
                "Errors / s by code",
                "gRPC calls (and stream items) per second that ended with a non-OK status.",
                (
                    Target(
                        "sum by (code) (rate(seqinfer_grpc_requests_total"
                        f'{{{I}, code!="OK"}}[{RI}]))',
                        "{{code}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Rejected step requests / s by reason",
                "Requests refused before computing (backpressure, deadline, invalid, ...).",
                (
                    Target(
                        f"sum by (reason) (rate(seqinfer_rejected_total{{{IM}}}[{RI}]))",
                        "{{reason}}",
                    ),
                ),
                unit="reqps",
            ),
        ),
    ),
    Row(
        "Resources",
        (
            Panel(
                "Device memory",
                "Allocated on each compute device (torch's allocator on CUDA; the process's "
                "resident set on CPU), and the bytes of each model's state slab.",
                (
                    Target(
                        f"max by (device) (seqinfer_device_memory_allocated_bytes{{{I}}})",
                        "{{device}} allocated",
                    ),
                    Target(
                        f"sum by (model) (seqinfer_state_slab_bytes{{{IM}}})",
                        "{{model}} state slab",
                    ),
                ),
                unit="bytes",
            ),
            Panel(
                "Process CPU",
                "CPU seconds per second used by the server process (1 = one core).",
                (
                    Target(
                        f"sum by (instance) (rate(process_cpu_seconds_total{{{I}}}[{RI}]))",
                        "{{instance}}",
                    ),
                ),
            ),
        ),
    ),
)


def _field_config(panel: Panel) -> dict[str, object]:
    custom: dict[str, object] = {}
    if panel.kind == "timeseries":
        custom = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
    return {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []}


def _panel_options(panel: Panel) -> dict[str, object]:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "yAxis": {"axisPlacement": "left"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Blues", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": True},
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, object]:
    targets = []
    for i, target in enumerate(panel.targets):
        t: dict[str, object] = {
            "datasource": DATASOURCE,
            "expr": target.expr,
            "legendFormat": target.legend,
            "refId": chr(ord("A") + i),
            "range": True,
        }
        if panel.kind == "heatmap":
            t["format"] = "heatmap"
        targets.append(t)
    out: dict[str, object] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": {**_panel_options(panel), **panel.options},
        "targets": targets,
    }
    return out


def _template_variable(
    name: str, label: str, query: str, depends_on_instance: bool
) -> dict[str, object]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,  # on time range change: new replicas and models appear
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
        **({"description": "Models of the selected instances."} if depends_on_instance else {}),
    }


TEMPLATE_QUERIES = {
    "instance": "label_values(seqinfer_build_info, instance)",
    "model": 'label_values(seqinfer_steps_total{instance=~"$instance"}, model)',
}


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON model (schema 39, Grafana 10.4 and later)."""
    panels: list[dict[str, object]] = []
    panel_id = 1
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_render_panel(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": "seqinfer",
        "title": "seqinfer",
        "description": "Stateful, batched GRU inference: throughput, latency, batching, "
        "sessions, errors and resources. Generated by deploy/grafana/generate_dashboard.py.",
        "tags": ["seqinfer", "grpc", "inference"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                _template_variable("instance", "Instance", TEMPLATE_QUERIES["instance"], False),
                _template_variable("model", "Model", TEMPLATE_QUERIES["model"], True),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The JSON text exactly as committed (2-space indent, trailing newline)."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
