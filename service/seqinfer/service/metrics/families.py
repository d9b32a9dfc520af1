"""What a scrape shows: the table of seqinfer's families, filled from counters and levels.

``FAMILIES`` is the one list of every seqinfer_* family with its type, help
text and labels; docs/metrics.md, the Grafana dashboard and
tests/e2e/test_prometheus_dashboard.py depend on these names, and
tests/unit/test_metrics_docs.py checks the doc against the table.

Two kinds of numbers fill it, both only when Prometheus scrapes (on the
scrape's thread), so the hot path pays nothing here:

* events, from the ``PrometheusObserver``'s counters;
* levels (sessions by tier, slab occupancy, queue depth, device memory), read
  from each model's ``RuntimeStats`` through ``stats_provider()``: cheaper to
  read than to track.

Every label value comes from a small fixed set (method names, status codes,
reasons, tiers) or from the served models; never from request content such as
a session id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from seqinfer.service.metrics.counters import (
    Histogram,
    MethodCounters,
    ModelCounters,
    PrometheusObserver,
)
from seqinfer.service.observer import RuntimeStats

log = logging.getLogger(__name__)

Kind = Literal["info", "gauge", "counter", "histogram"]
TIERS: tuple[str, ...] = ("device", "host", "store")


@dataclass(frozen=True)
class Family:
    """One exported family. ``name`` is as registered: a counter is scraped as
    ``name_total``, an info as ``name_info``, a histogram as ``name_bucket``,
    ``_sum`` and ``_count``."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()  # for an info: the labels its one sample carries

    def labelled(self, *extra: str) -> Family:
        """This family with ``extra`` labels after its own."""
        return replace(self, labels=(*self.labels, *extra))

    @property
    def scraped_name(self) -> str:
        suffix = {"counter": "_total", "info": "_info"}.get(self.kind, "")
        return self.name + suffix

    # One constructor per kind, so that callers get the type they add samples to.
    def info(self) -> InfoMetricFamily:
        assert self.kind == "info", self.name
        return InfoMetricFamily(self.name, self.help)  # the labels come with the value

    def gauge(self) -> GaugeMetricFamily:
        assert self.kind == "gauge", self.name
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))

    def counter(self) -> CounterMetricFamily:
        assert self.kind == "counter", self.name
        return CounterMetricFamily(self.name, self.help, labels=list(self.labels))

    def histogram(self) -> HistogramMetricFamily:
        assert self.kind == "histogram", self.name
        return HistogramMetricFamily(self.name, self.help, labels=list(self.labels))


# fmt: off
BUILD = Family(
    "seqinfer_build", "info", "Version of the server and its runtime.",
    ("version", "python_version", "grpc_version", "torch_version"),
)
# Levels.
SESSIONS = Family(
    "seqinfer_sessions", "gauge",
    "Open sessions by model and where their state lives (device, host, snapshot).",
    ("model", "tier"),
)
SLAB_CAPACITY = Family(
    "seqinfer_state_slab_capacity_slots", "gauge",
    "Session slots allocated in the model's state slab.", ("model",),
)
SLAB_USED = Family(
    "seqinfer_state_slab_used_slots", "gauge", "Slab slots holding a session's state.",
    ("model",),
)
SLAB_BYTES = Family(
    "seqinfer_state_slab_bytes", "gauge", "Bytes of the model's state slab tensor.", ("model",),
)
WEIGHTS_BYTES = Family(
    "seqinfer_model_weights_bytes", "gauge", "Bytes of the model's weights on its device.",
    ("model",),
)
STATIC_BYTES = Family(
    "seqinfer_static_step_bytes", "gauge",
    "Bytes of the model's static single-step buffers and CUDA graph pools (0 without them).",
    ("model",),
)
QUEUE_DEPTH = Family(
    "seqinfer_queue_depth", "gauge", "Step requests accepted and not yet computed.", ("model",),
)
DEVICE_MEMORY = Family(
    "seqinfer_device_memory_allocated_bytes", "gauge",
    "Memory allocated on a compute device: torch's allocator on CUDA; "
    "on CPU, the process's resident set size.",
    ("device",),
)
# Events, per gRPC method.
GRPC_REQUESTS = Family(
    "seqinfer_grpc_requests", "counter",
    "gRPC calls (and stream items) finished, by method and status code.", ("method", "code"),
)
GRPC_IN_FLIGHT = Family(
    "seqinfer_grpc_requests_in_flight", "gauge",
    "gRPC calls (and stream items) started and not yet finished.", ("method",),
)
GRPC_DURATION = Family(
    "seqinfer_grpc_request_duration_seconds", "histogram",
    "Time from a call's (or stream item's) start to its status, by method.", ("method",),
)
# Events, per tenant: empty unless metrics_tenant_label is on (cardinality).
TENANT_REQUESTS = Family(
    "seqinfer_tenant_requests", "counter",
    "gRPC calls finished, by tenant (from its token), method and status code; "
    "only with metrics_tenant_label.",
    ("tenant", "method", "code"),
)
# Events, per model.
STEPS = Family("seqinfer_steps", "counter", "Timesteps computed, by model.", ("model",))
REQUEST_TIMESTEPS = Family(
    "seqinfer_request_timesteps", "histogram", "Timesteps per computed step request.",
    ("model",),
)
STEP_LATENCY = Family(
    "seqinfer_step_latency_seconds", "histogram",
    "End-to-end time of a step request in the server: accepted to result ready.", ("model",),
)
QUEUE_WAIT = Family(
    "seqinfer_queue_wait_seconds", "histogram",
    "Time a step request waited in the scheduler queue before its batch started.", ("model",),
)
BATCH_COMPUTE = Family(
    "seqinfer_batch_compute_seconds", "histogram",
    "Engine time of one scheduler iteration (gather, GRU step, scatter).", ("model",),
)
BATCH_SIZE = Family(
    "seqinfer_batch_size", "histogram",
    "Step requests (sessions) computed together in one scheduler iteration.", ("model",),
)
ITERATIONS = Family(
    "seqinfer_scheduler_iterations", "counter",
    "Scheduler iterations that ran the engine, by model.", ("model",),
)
SESSIONS_OPENED = Family(
    "seqinfer_sessions_opened", "counter",
    "Sessions created (open, start, fork, import), by model.", ("model",),
)
SESSIONS_ENDED = Family(
    "seqinfer_sessions_ended", "counter",
    "Sessions ended, by model and reason (closed, expired, evicted).", ("model", "reason"),
)
SPILLED = Family(
    "seqinfer_sessions_spilled", "counter",
    "Idle sessions written to the store to free their slots (tiering), by model.", ("model",),
)
RESTORED = Family(
    "seqinfer_sessions_restored", "counter",
    "Sessions brought back from the store onto the device on use (tiering, lazy restore).",
    ("model",),
)
RESTORE_LATENCY = Family(
    "seqinfer_restore_seconds", "histogram",
    "Time from a session's first use while in the store to its state back on the device.",
    ("model",),
)
REJECTED = Family(
    "seqinfer_rejected", "counter",
    "Step requests refused before computing, by model and reason.", ("model", "reason"),
)
# fmt: on

LEVELS: tuple[Family, ...] = (
    SESSIONS, SLAB_CAPACITY, SLAB_USED, SLAB_BYTES, WEIGHTS_BYTES, STATIC_BYTES, QUEUE_DEPTH,
    DEVICE_MEMORY,
)  # fmt: skip
EVENTS: tuple[Family, ...] = (
    GRPC_REQUESTS, GRPC_IN_FLIGHT, GRPC_DURATION, TENANT_REQUESTS, STEPS, REQUEST_TIMESTEPS,
    STEP_LATENCY, QUEUE_WAIT, BATCH_COMPUTE, BATCH_SIZE, ITERATIONS, SESSIONS_OPENED,
    SESSIONS_ENDED, REJECTED, SPILLED, RESTORED, RESTORE_LATENCY,
)  # fmt: skip
# In the order a scrape shows them.
FAMILIES: tuple[Family, ...] = (BUILD, *LEVELS, *EVENTS)


def _buckets(h: Histogram) -> tuple[list[tuple[str, float]], float]:
    """(le, cumulative count) pairs including +Inf, and the sum, as add_metric takes them."""
    running, total = h.cumulative()
    # repr(float): the spelling of prometheus_client's own histograms ("5e-05", "0.001", "1.0").
    bounds = [repr(float(b)) for b in h.bounds] + ["+Inf"]
    return list(zip(bounds, running, strict=True)), total


def build_info(labels: dict[str, str]) -> Metric:
    info = BUILD.info()
    info.add_metric([], labels)
    return info


def _resident_bytes() -> int | None:
    """This process's resident set size, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def level_families(stats: Sequence[RuntimeStats]) -> list[Metric]:
    """The LEVELS families, in that order, from the models' readings."""
    sessions = SESSIONS.gauge()
    capacity = SLAB_CAPACITY.gauge()
    used = SLAB_USED.gauge()
    slab_bytes = SLAB_BYTES.gauge()
    weights = WEIGHTS_BYTES.gauge()
    static = STATIC_BYTES.gauge()
    queue = QUEUE_DEPTH.gauge()
    device_memory = DEVICE_MEMORY.gauge()
    memory_by_device: dict[str, int] = {}
    for s in stats:
        tiers = dict.fromkeys(TIERS, 0)
        tiers.update(s.sessions_by_tier)
        for tier, count in tiers.items():
            sessions.add_metric([s.model, tier], count)
        capacity.add_metric([s.model], s.slab_capacity)
        used.add_metric([s.model], s.slab_used)
        slab_bytes.add_metric([s.model], s.slab_bytes)
        weights.add_metric([s.model], s.weights_bytes)
        static.add_metric([s.model], s.graph_bytes)
        queue.add_metric([s.model], s.queue_depth)
        if s.device_memory_bytes is not None:
            # Per device, not per model: models sharing a GPU report the same reading.
            memory_by_device[s.device] = s.device_memory_bytes
        elif s.device.startswith("cpu") and s.device not in memory_by_device:
            rss = _resident_bytes()
            if rss is not None:
                memory_by_device[s.device] = rss
    for device, value in sorted(memory_by_device.items()):
        device_memory.add_metric([device], value)
    return [sessions, capacity, used, slab_bytes, weights, static, queue, device_memory]


def grpc_families(
    methods: dict[str, MethodCounters],
    frontends: dict[str, dict[str, MethodCounters]] | None = None,
) -> list[Metric]:
    """GRPC_REQUESTS, GRPC_IN_FLIGHT and GRPC_DURATION from per-method counters.

    With ``frontends`` (the engine process of ``serve --frontends K``), each
    front end's counters come labelled ``frontend="<index>"``, and this
    process's own (none: the engine process serves no gRPC) with
    ``frontend=""``, which Prometheus reads as no label at all.
    """
    sources: list[tuple[str, dict[str, MethodCounters]]] = [("", methods)]
    extra: tuple[str, ...] = ()
    if frontends:
        extra = ("frontend",)
        sources += sorted(frontends.items(), key=lambda item: (len(item[0]), item[0]))
    requests = GRPC_REQUESTS.labelled(*extra).counter()
    in_flight = GRPC_IN_FLIGHT.labelled(*extra).gauge()
    duration = GRPC_DURATION.labelled(*extra).histogram()
    for frontend, table in sources:
        tail = [frontend] if extra else []
        for method, m in sorted(table.items()):
            in_flight.add_metric([method, *tail], m.in_flight)
            for code, count in sorted(m.codes.copy().items()):
                requests.add_metric([method, code, *tail], count)
            duration.add_metric([method, *tail], *_buckets(m.duration))
    return [requests, in_flight, duration]


def tenant_family(
    tenants: dict[tuple[str, str], dict[str, int]],
    frontends: dict[str, dict[tuple[str, str], dict[str, int]]] | None = None,
) -> Metric:
    """TENANT_REQUESTS; with ``frontends``, labelled ``frontend`` as ``grpc_families`` does."""
    sources = [("", tenants)]
    extra: tuple[str, ...] = ()
    if frontends is not None:
        extra = ("frontend",)
        sources += sorted(frontends.items(), key=lambda item: (len(item[0]), item[0]))
    family = TENANT_REQUESTS.labelled(*extra).counter()
    for frontend, table in sources:
        tail = [frontend] if extra else []
        for (tenant, method), codes in sorted(table.items()):
            for code, count in sorted(codes.items()):
                family.add_metric([tenant, method, code, *tail], count)
    return family


def event_families(
    models: dict[str, ModelCounters],
    methods: dict[str, MethodCounters],
    frontends: dict[str, dict[str, MethodCounters]] | None = None,
    tenants: dict[tuple[str, str], dict[str, int]] | None = None,
    frontend_tenants: dict[str, dict[tuple[str, str], dict[str, int]]] | None = None,
) -> list[Metric]:
    """The EVENTS families, in that order, from the observer's counters.

    Under ``serve --frontends K`` the per-tenant calls are counted in the
    front ends and come labelled by front end, like the gRPC families.
    """
    requests, in_flight, duration = grpc_families(methods, frontends)
    by_tenant = tenant_family(tenants or {}, frontend_tenants if frontends else None)
    steps = STEPS.counter()
    timesteps = REQUEST_TIMESTEPS.histogram()
    latency = STEP_LATENCY.histogram()
    queue_wait = QUEUE_WAIT.histogram()
    batch_seconds = BATCH_COMPUTE.histogram()
    batch_size = BATCH_SIZE.histogram()
    iterations = ITERATIONS.counter()
    opened = SESSIONS_OPENED.counter()
    ended = SESSIONS_ENDED.counter()
    rejected = REJECTED.counter()
    spilled = SPILLED.counter()
    restored = RESTORED.counter()
    restore_latency = RESTORE_LATENCY.histogram()
    for model, c in sorted(models.items()):
        steps.add_metric([model], c.steps)
        timesteps.add_metric([model], *_buckets(c.timesteps))
        latency.add_metric([model], *_buckets(c.latency))
        queue_wait.add_metric([model], *_buckets(c.queue_wait))
        batch_seconds.add_metric([model], *_buckets(c.batch_seconds))
        batch_size.add_metric([model], *_buckets(c.batch_size))
        iterations.add_metric([model], c.iterations)
        opened.add_metric([model], c.opened)
        for reason, count in c.ended.copy().items():
            ended.add_metric([model, reason], count)
        for reason, count in c.rejected.copy().items():
            rejected.add_metric([model, reason], count)
        spilled.add_metric([model], c.spilled)
        restored.add_metric([model], c.restored)
        restore_latency.add_metric([model], *_buckets(c.restore_seconds))
    return [
        requests, in_flight, duration, by_tenant, steps, timesteps, latency, queue_wait,
        batch_seconds, batch_size, iterations, opened, ended, rejected, spilled, restored,
        restore_latency,
    ]  # fmt: skip


class SeqinferCollector(Collector):
    """Every seqinfer_* family of one server, built afresh at each scrape."""

    def __init__(
        self,
        observer: PrometheusObserver,
        stats_provider: Callable[[], Iterable[RuntimeStats]],
        build_labels: dict[str, str],
    ) -> None:
        self._observer = observer
        self._stats_provider = stats_provider
        self._build_labels = build_labels

    def collect(self) -> Iterator[Metric]:
        yield build_info(self._build_labels)
        try:
            stats = list(self._stats_provider())
        except Exception:
            # A scrape must still show the counters; the gap in the levels is the signal.
            log.exception("metrics: stats provider failed; levels omitted from this scrape")
            stats = []
        yield from level_families(stats)
        models, methods = self._observer.totals()
        # A served model gets zero-valued event series before its first event, so
        # that rates and dashboards show 0 rather than nothing for an idle model.
        for s in stats:
            models.setdefault(s.model, ModelCounters())
        observer = self._observer
        yield from event_families(
            models,
            methods,
            observer.frontend_totals(),
            observer.tenant_totals(),
            observer.frontend_tenant_totals(),
        )
