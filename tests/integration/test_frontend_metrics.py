"""`serve --frontends 2 --metrics-port P`: one scrape shows the whole server.

Each front end counts its own gRPC calls and sends the engine process
snapshots of them; the engine's /metrics shows them labelled by front end
next to its own step counters. Calls go through each front end's own port,
so the test knows exactly how many each one served, and waits for the
scrape to show those numbers.
"""

from __future__ import annotations

import re
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqinfer.service.metrics import PrometheusObserver
from seqinfer.service.metrics.frontends import (
    methods_from,
    snapshot,
    tenant_snapshot,
    tenants_from,
)
from seqinfer.service.tenants import new_token, token_hash
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, free_port, serve_args
from tests.support import to_tensor, wait_until

FRONT = re.compile(r"seqinfer: front end (\d+) on port (\d+) \(pid (\d+)\)")
CALLS = {"0": 3, "1": 5}  # steps through each front end: different, so labels cannot swap


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_the_engine_scrape_shows_every_front_ends_calls_and_the_engine_counters() -> None:
    port = free_port()
    args = serve_args("--frontends", "2", "--metrics-port", str(port))
    with ServeProcess(args, metrics_port=port) as server:
        server.port()
        own: dict[str, int] = {}
        for line in server.wait_lines("seqinfer: front end ", 2):
            match = FRONT.match(line)
            assert match, line
            own[match[1]] = int(match[2])
        x = np.zeros((1, 64), np.float32)
        for frontend, calls in CALLS.items():
            with grpc.insecure_channel(f"127.0.0.1:{own[frontend]}") as channel:
                stub = pb_grpc.SeqinferStub(channel)
                sid = f"s{frontend}"
                stub.OpenSession(
                    pb.OpenSessionRequest(model="bench-gru", session_id=sid), timeout=30
                )
                for _ in range(calls):
                    stub.Step(pb.StepRequest(session_id=sid, inputs=to_tensor(x)), timeout=30)

        def shown() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            samples = _scrape(server.metrics_url())
            for frontend, calls in CALLS.items():
                got = _value(
                    samples, "seqinfer_grpc_requests_total",
                    method="Step", code="OK", frontend=frontend,
                )  # fmt: skip
                if got != calls:
                    return None
            return samples

        wait_until(lambda: shown() is not None, 30, "every front end's calls on the engine scrape")
        samples = shown()
        assert samples is not None
        for frontend, calls in CALLS.items():
            assert _value(
                samples, "seqinfer_grpc_requests_total",
                method="OpenSession", code="OK", frontend=frontend,
            ) == 1  # fmt: skip
            count = "seqinfer_grpc_request_duration_seconds_count"
            assert _value(samples, count, method="Step", frontend=frontend) == calls
            assert (
                _value(
                    samples, "seqinfer_grpc_requests_in_flight", method="Step", frontend=frontend
                )
                == 0
            )
        # The engine's own counters, on the same scrape.
        total = sum(CALLS.values())
        assert _value(samples, "seqinfer_steps_total", model="bench-gru:1") == total
        assert _value(samples, "seqinfer_request_timesteps_count", model="bench-gru:1") == total
        assert _value(samples, "seqinfer_sessions_opened_total", model="bench-gru:1") == len(CALLS)
        # No gRPC sample without its front end: the engine process serves no gRPC.
        assert not [
            k for k in samples if k[0].startswith("seqinfer_grpc") and ("frontend", "") in k[1]
        ]


def test_a_snapshot_comes_back_as_the_same_counters_and_a_malformed_one_is_refused() -> None:
    observer = PrometheusObserver()
    observer.rpc_started("Step")
    observer.rpc_finished("Step", "OK", 0.002)
    observer.rpc_started("Step")
    methods = methods_from(snapshot(observer))
    step = methods["Step"]
    assert (step.in_flight, step.codes, step.duration.total) == (1, {"OK": 1}, 0.002)
    assert sum(step.duration.counts) == 1
    good = snapshot(observer)
    in_flight, codes, counts, total = good["Step"]
    for bad in (
        [],
        {"Step": (in_flight, codes, counts[:-1], total)},  # buckets of another version
        {"Step": (in_flight, {"MADE_UP": 1}, counts, total)},
        {"Step": ("1", codes, counts, total)},
    ):
        with pytest.raises(ValueError):
            methods_from(bad)


def test_tenant_counters_of_every_front_end_reach_the_engine_scrape(tmp_path) -> None:
    """metrics_tenant_label under --frontends 2: per-tenant calls, labelled by front end."""
    tokens = {"alice": new_token(), "bob": new_token()}
    path = tmp_path / "tokens"
    path.write_text("".join(f"{token_hash(t)} {name}\n" for name, t in tokens.items()))
    # Different counts per (front end, tenant), so that no two labels could swap unseen.
    calls = {("0", "alice"): 2, ("0", "bob"): 3, ("1", "alice"): 4, ("1", "bob"): 1}
    port = free_port()
    env = {"SEQINFER_AUTH_TOKEN_FILE": str(path), "SEQINFER_METRICS_TENANT_LABEL": "true"}
    args = serve_args("--frontends", "2", "--metrics-port", str(port))
    with ServeProcess(args, env=env, metrics_port=port) as server:
        server.port()
        own = {}
        for line in server.wait_lines("seqinfer: front end ", 2):
            match = FRONT.match(line)
            assert match, line
            own[match[1]] = int(match[2])
        for (frontend, tenant), count in calls.items():
            with grpc.insecure_channel(f"127.0.0.1:{own[frontend]}") as channel:
                stub = pb_grpc.SeqinferStub(channel)
                metadata = (("authorization", f"Bearer {tokens[tenant]}"),)
                for _ in range(count):
                    stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30)
                with pytest.raises(grpc.RpcError):  # unauthenticated: no tenant, not counted
                    stub.ListModels(pb.ListModelsRequest(), timeout=30)

        def tenant_samples() -> dict[tuple[str, str], float]:
            return {
                (dict(labels)["frontend"], dict(labels)["tenant"]): value
                for (name, labels), value in _scrape(server.metrics_url()).items()
                if name == "seqinfer_tenant_requests_total"
                and dict(labels)["method"] == "ListModels"
                and dict(labels)["code"] == "OK"
            }

        wait_until(
            lambda: tenant_samples() == calls, 30, "every front end's tenant calls on the scrape"
        )
        samples = _scrape(server.metrics_url())
        tenant_series = [k for k in samples if k[0] == "seqinfer_tenant_requests_total"]
        # Only OK ListModels calls by a known tenant; each series names its front end.
        assert len(tenant_series) == len(calls)
        text = urllib.request.urlopen(server.metrics_url(), timeout=10).read().decode()
        for token in tokens.values():
            assert token not in text and token_hash(token) not in text


def test_a_tenant_snapshot_round_trips_and_a_malformed_one_is_refused() -> None:
    observer = PrometheusObserver()
    observer.tenant_call_finished("alice", "Step", "OK")
    observer.tenant_call_finished("alice", "Step", "OK")
    observer.tenant_call_finished("bob", "Step", "RESOURCE_EXHAUSTED")
    assert tenants_from(tenant_snapshot(observer)) == {
        ("alice", "Step"): {"OK": 2},
        ("bob", "Step"): {"RESOURCE_EXHAUSTED": 1},
    }
    for bad in ({}, [("alice", "Step")], [("alice", "Step", {"MADE_UP": 1})], [(1, "Step", {})]):
        with pytest.raises(ValueError):
            tenants_from(bad)
