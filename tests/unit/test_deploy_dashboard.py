"""The Grafana dashboard: the committed JSON is the generator's output and is well formed.

The queries themselves are evaluated against a real Prometheus in
tests/e2e/test_prometheus_dashboard.py; here: structure, variables, data
source, and that every metric a query names is one the exporter produces.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from seqinfer.service.metrics import start_metrics_exporter
from seqinfer.service.observer import RuntimeStats

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "seqinfer.json"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_dashboard", GRAFANA / "generate_dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while being created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets() -> list[dict[str, Any]]:
    return [t for p in committed()["panels"] for t in p.get("targets", [])]


def test_committed_json_is_the_generator_output() -> None:
    gen = generator()
    assert DASHBOARD.read_text() == gen.render(), (
        "deploy/grafana/dashboards/seqinfer.json is stale: run "
        "python deploy/grafana/generate_dashboard.py"
    )
    assert gen.main(["--check"]) == 0


def test_panels_are_well_formed() -> None:
    board = committed()
    assert board["uid"] == "seqinfer"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert panel["description"], panel["title"]
    # No two panels overlap.
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_queries_use_the_variables_and_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    for target in targets():
        expr = target["expr"]
        assert target["datasource"]["uid"] == uid
        assert 'instance=~"$instance"' in expr, expr
        if "model" in expr and "seqinfer_grpc" not in expr:
            assert 'model=~"$model"' in expr, expr
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", expr
    variables = {v["name"]: v for v in committed()["templating"]["list"]}
    assert set(variables) == {"instance", "model"}
    for v in variables.values():
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
        assert v["datasource"]["uid"] == uid


def test_every_metric_in_the_dashboard_is_exported() -> None:
    exporter = start_metrics_exporter(
        "127.0.0.1",
        0,
        lambda: [RuntimeStats(model="m:1", device="cpu", slab_capacity=1)],
        version="test",
    )
    try:
        obs = exporter.observer
        obs.rpc_started("Step")
        obs.rpc_finished("Step", "OK", 0.001)
        obs.request_completed("m:1", 1, 0.001, 0.0001)
        obs.batch_completed("m:1", 1, 1, 0.0005)
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        exporter.stop()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used = set()
    for target in targets():
        used |= set(re.findall(r"\b((?:seqinfer|process)_[a-z0-9_]+)\b", target["expr"]))
    for query in generator().TEMPLATE_QUERIES.values():
        used |= set(re.findall(r"\b(seqinfer_[a-z0-9_]+)\b", query))
    missing = used - exported
    assert not missing, missing
