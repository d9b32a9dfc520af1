"""The Prometheus exporter: names, labels and values as scraped over HTTP."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from seqinfer.service.metrics import (
    LATENCY_BUCKETS,
    MAX_METHODS,
    MetricsExporter,
    PrometheusObserver,
    start_metrics_exporter,
)
from seqinfer.service.observer import Observer, RuntimeStats

MODEL = "bench-gru:1"


def scrape(port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples: {found}"
    return found[0].value


def cpu_stats(**kw: object) -> RuntimeStats:
    base: dict[str, object] = dict(
        model=MODEL,
        device="cpu",
        sessions_by_tier={"device": 3, "host": 1},
        slab_capacity=1024,
        slab_used=4,
        slab_bytes=1024 * 2 * 256 * 4,
        queue_depth=7,
        weights_bytes=123_456,
        graph_bytes=789,
    )
    base.update(kw)
    return RuntimeStats(**base)  # type: ignore[arg-type]


@pytest.fixture
def stats() -> list[RuntimeStats]:
    return [cpu_stats()]


@pytest.fixture
def exporter(stats: list[RuntimeStats]) -> Iterator[MetricsExporter]:
    exp = start_metrics_exporter("127.0.0.1", 0, lambda: list(stats), version="9.8.7")
    yield exp
    exp.stop()


def test_observer_is_an_observer(exporter: MetricsExporter) -> None:
    assert isinstance(exporter.observer, Observer)
    assert isinstance(exporter.observer, PrometheusObserver)
    assert exporter.port > 0


def test_build_info(exporter: MetricsExporter) -> None:
    samples = scrape(exporter.port)
    info = [s for s in samples if s.name == "seqinfer_build_info"]
    assert len(info) == 1
    assert info[0].value == 1
    assert info[0].labels["version"] == "9.8.7"
    assert re.fullmatch(r"3\.\d+\.\d+.*", info[0].labels["python_version"])
    assert info[0].labels["grpc_version"] != "unknown"


def test_rpc_counters_and_in_flight(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    for _ in range(3):
        obs.rpc_started("Step")
    obs.rpc_finished("Step", "OK", 0.0002)
    obs.rpc_finished("Step", "NOT_FOUND", 0.0001)
    obs.rpc_started("OpenSession")
    obs.rpc_finished("OpenSession", "OK", 0.003)
    obs.rpc_finished("Step", "NOT_A_CODE", 0.001)  # mapped to UNKNOWN, never a new label value
    s = scrape(exporter.port)
    assert value(s, "seqinfer_grpc_requests_total", method="Step", code="OK") == 1
    assert value(s, "seqinfer_grpc_requests_total", method="Step", code="NOT_FOUND") == 1
    assert value(s, "seqinfer_grpc_requests_total", method="Step", code="UNKNOWN") == 1
    assert value(s, "seqinfer_grpc_requests_total", method="OpenSession", code="OK") == 1
    assert not [x for x in s if x.labels.get("code") == "NOT_A_CODE"]
    assert value(s, "seqinfer_grpc_requests_in_flight", method="Step") == 0
    assert value(s, "seqinfer_grpc_requests_in_flight", method="OpenSession") == 0
    assert value(s, "seqinfer_grpc_request_duration_seconds_count", method="Step") == 3
    assert value(s, "seqinfer_grpc_request_duration_seconds_sum", method="Step") == pytest.approx(
        0.0013
    )
    obs.rpc_started("Step")
    assert value(scrape(exporter.port), "seqinfer_grpc_requests_in_flight", method="Step") == 1


def test_request_histograms_and_steps(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    obs.request_completed(MODEL, 1, 0.0003, 0.0001)
    obs.request_completed(MODEL, 1, 0.0003, 0.00004)
    obs.request_completed(MODEL, 100, 0.2, 0.05)
    s = scrape(exporter.port)
    assert value(s, "seqinfer_steps_total", model=MODEL) == 102
    assert value(s, "seqinfer_request_timesteps_count", model=MODEL) == 3
    assert value(s, "seqinfer_request_timesteps_sum", model=MODEL) == 102
    assert value(s, "seqinfer_request_timesteps_bucket", model=MODEL, le="1.0") == 2
    assert value(s, "seqinfer_request_timesteps_bucket", model=MODEL, le="64.0") == 2
    assert value(s, "seqinfer_request_timesteps_bucket", model=MODEL, le="128.0") == 3
    lat = "seqinfer_step_latency_seconds"
    assert value(s, f"{lat}_bucket", model=MODEL, le="0.00025") == 0
    assert value(s, f"{lat}_bucket", model=MODEL, le="0.0005") == 2
    assert value(s, f"{lat}_bucket", model=MODEL, le="0.25") == 3
    assert value(s, f"{lat}_bucket", model=MODEL, le="+Inf") == 3
    assert value(s, f"{lat}_sum", model=MODEL) == pytest.approx(0.2006)
    q = "seqinfer_queue_wait_seconds"
    # 40 µs falls below the smallest bound (50 µs): it is in every bucket.
    assert value(s, f"{q}_bucket", model=MODEL, le="5e-05") == 1
    assert value(s, f"{q}_bucket", model=MODEL, le="0.0001") == 2
    assert value(s, f"{q}_count", model=MODEL) == 3


def test_bucket_bounds_are_inclusive_and_span_50us_to_5s(exporter: MetricsExporter) -> None:
    assert LATENCY_BUCKETS[0] == 50e-6
    assert LATENCY_BUCKETS[-1] == 5.0
    obs = exporter.observer
    obs.batch_completed(MODEL, 8, 8, 0.001)  # exactly on the 1 ms bound: le="0.001" holds it
    obs.batch_completed(MODEL, 9, 9, 7.0)  # beyond 5 s: only +Inf holds it
    s = scrape(exporter.port)
    b = "seqinfer_batch_compute_seconds_bucket"
    assert value(s, b, model=MODEL, le="0.0005") == 0
    assert value(s, b, model=MODEL, le="0.001") == 1
    assert value(s, b, model=MODEL, le="5.0") == 1
    assert value(s, b, model=MODEL, le="+Inf") == 2
    bounds = sorted(float(x.labels["le"]) for x in s if x.name == b and x.labels["le"] != "+Inf")
    assert bounds == list(LATENCY_BUCKETS)


def test_batches_and_iterations(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    for size in (1, 2, 3, 64, 64):
        obs.batch_completed(MODEL, size, size, 0.0005)
    s = scrape(exporter.port)
    assert value(s, "seqinfer_scheduler_iterations_total", model=MODEL) == 5
    assert value(s, "seqinfer_batch_size_count", model=MODEL) == 5
    assert value(s, "seqinfer_batch_size_sum", model=MODEL) == 134
    assert value(s, "seqinfer_batch_size_bucket", model=MODEL, le="2.0") == 2
    assert value(s, "seqinfer_batch_size_bucket", model=MODEL, le="4.0") == 3
    assert value(s, "seqinfer_batch_size_bucket", model=MODEL, le="64.0") == 5


def test_sessions_and_rejections(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    for _ in range(4):
        obs.session_opened(MODEL)
    obs.session_ended(MODEL, "closed")
    obs.session_ended(MODEL, "expired")
    obs.session_ended(MODEL, "evicted")
    obs.session_ended(MODEL, "evicted")
    obs.session_ended(MODEL, "sess-1234")  # a caller bug must not widen the label
    obs.request_rejected(MODEL, "backpressure")
    obs.request_rejected(MODEL, "deadline")
    obs.request_rejected(MODEL, "invalid")
    obs.request_rejected(MODEL, "invalid")
    s = scrape(exporter.port)
    assert value(s, "seqinfer_sessions_opened_total", model=MODEL) == 4
    ended = "seqinfer_sessions_ended_total"
    assert value(s, ended, model=MODEL, reason="closed") == 1
    assert value(s, ended, model=MODEL, reason="expired") == 1
    assert value(s, ended, model=MODEL, reason="evicted") == 2
    assert value(s, ended, model=MODEL, reason="other") == 1
    rej = "seqinfer_rejected_total"
    assert value(s, rej, model=MODEL, reason="backpressure") == 1
    assert value(s, rej, model=MODEL, reason="deadline") == 1
    assert value(s, rej, model=MODEL, reason="invalid") == 2
    assert value(s, rej, model=MODEL, reason="capacity") == 0  # known reasons start at zero


def test_pull_gauges_from_stats_provider(exporter: MetricsExporter) -> None:
    s = scrape(exporter.port)
    assert value(s, "seqinfer_sessions", model=MODEL, tier="device") == 3
    assert value(s, "seqinfer_sessions", model=MODEL, tier="host") == 1
    assert value(s, "seqinfer_sessions", model=MODEL, tier="store") == 0  # zero-filled
    assert value(s, "seqinfer_state_slab_capacity_slots", model=MODEL) == 1024
    assert value(s, "seqinfer_state_slab_used_slots", model=MODEL) == 4
    assert value(s, "seqinfer_state_slab_bytes", model=MODEL) == 1024 * 2 * 256 * 4
    assert value(s, "seqinfer_model_weights_bytes", model=MODEL) == 123_456
    assert value(s, "seqinfer_static_step_bytes", model=MODEL) == 789
    assert value(s, "seqinfer_queue_depth", model=MODEL) == 7
    # CPU: the process's resident set, a plausible number of bytes for a Python process.
    rss = value(s, "seqinfer_device_memory_allocated_bytes", device="cpu")
    assert 10e6 < rss < 100e9
    # A model seen only through the provider still gets zero-valued event series.
    assert value(s, "seqinfer_steps_total", model=MODEL) == 0
    assert value(s, "seqinfer_sessions_ended_total", model=MODEL, reason="evicted") == 0


def test_gauges_follow_the_provider_at_each_scrape(
    exporter: MetricsExporter, stats: list[RuntimeStats]
) -> None:
    stats[0] = cpu_stats(queue_depth=0, slab_used=0, sessions_by_tier={})
    stats.append(
        RuntimeStats(
            model="big:2",
            device="cuda:0",
            sessions_by_tier={"device": 5},
            slab_capacity=8,
            slab_used=5,
            slab_bytes=640,
            queue_depth=2,
            device_memory_bytes=123456789,
        )
    )
    s = scrape(exporter.port)
    assert value(s, "seqinfer_queue_depth", model=MODEL) == 0
    assert value(s, "seqinfer_queue_depth", model="big:2") == 2
    assert value(s, "seqinfer_sessions", model="big:2", tier="device") == 5
    assert value(s, "seqinfer_device_memory_allocated_bytes", device="cuda:0") == 123456789
    assert value(s, "seqinfer_sessions", model=MODEL, tier="device") == 0


def test_failing_stats_provider_still_exports_counters() -> None:
    def broken() -> list[RuntimeStats]:
        raise RuntimeError("boom")

    exp = start_metrics_exporter("127.0.0.1", 0, broken, version="1")
    try:
        exp.observer.request_completed(MODEL, 2, 0.001, 0.0001)
        s = scrape(exp.port)
        assert value(s, "seqinfer_steps_total", model=MODEL) == 2
        assert not [x for x in s if x.name == "seqinfer_queue_depth"]
    finally:
        exp.stop()


def test_updates_from_many_threads_are_not_lost(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    threads, per_thread = 8, 5000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            obs.rpc_started("StepMany")
            obs.request_completed(MODEL, 1, 0.0001, 0.00001)
            obs.batch_completed(MODEL, 1, 1, 0.0001)
            obs.rpc_finished("StepMany", "OK", 0.0001)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    s = scrape(exporter.port)
    n = threads * per_thread
    assert value(s, "seqinfer_steps_total", model=MODEL) == n
    assert value(s, "seqinfer_scheduler_iterations_total", model=MODEL) == n
    assert value(s, "seqinfer_step_latency_seconds_count", model=MODEL) == n
    assert value(s, "seqinfer_grpc_requests_total", method="StepMany", code="OK") == n
    assert value(s, "seqinfer_grpc_requests_in_flight", method="StepMany") == 0


def test_in_flight_started_and_finished_on_different_threads(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    obs.rpc_started("Step")
    t = threading.Thread(target=obs.rpc_finished, args=("Step", "OK", 0.001))
    t.start()
    t.join()
    s = scrape(exporter.port)
    assert value(s, "seqinfer_grpc_requests_in_flight", method="Step") == 0


def test_method_label_is_capped() -> None:
    obs = PrometheusObserver()
    for i in range(MAX_METHODS + 10):
        obs.rpc_started(f"M{i}")
        obs.rpc_finished(f"M{i}", "OK", 0.0)
    _, methods = obs.totals()
    assert len(methods) == MAX_METHODS + 1  # the first MAX_METHODS, then "other"
    assert methods["other"].codes["OK"] == 10


def test_names_follow_prometheus_conventions(exporter: MetricsExporter) -> None:
    obs = exporter.observer
    obs.rpc_started("Step")
    obs.rpc_finished("Step", "OK", 0.001)
    obs.request_completed(MODEL, 1, 0.001, 0.0001)
    obs.batch_completed(MODEL, 1, 1, 0.0005)
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("seqinfer_")]
    assert len(families) >= 19
    for f in families:
        assert re.fullmatch(r"seqinfer_[a-z0-9_]+", f.name), f.name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
        if f.type == "histogram" and ("latency" in f.name or "wait" in f.name):
            assert f.name.endswith("_seconds"), f.name
        for s in f.samples:
            # Bounded labels only: nothing that could carry a session or request id.
            assert set(s.labels) <= {
                "method", "code", "model", "reason", "tier", "device", "le",
                "version", "python_version", "grpc_version", "torch_version",
            }, (s.name, s.labels)  # fmt: skip
    # The standard process collector rides along in the same (dedicated) registry.
    assert "process_cpu_seconds_total" in text


def test_two_exporters_do_not_collide_and_stop_frees_the_port() -> None:
    a = start_metrics_exporter("127.0.0.1", 0, list, version="a")
    b = start_metrics_exporter("127.0.0.1", 0, list, version="b")
    try:
        a.observer.session_opened("m:1")
        sa, sb = scrape(a.port), scrape(b.port)
        assert value(sa, "seqinfer_sessions_opened_total", model="m:1") == 1
        assert not [s for s in sb if s.name == "seqinfer_sessions_opened_total"]
        assert value(sb, "seqinfer_build_info", version="b") == 1
    finally:
        a.stop()
        b.stop()
    b.stop()  # idempotent
    with pytest.raises(OSError):
        scrape(a.port)
