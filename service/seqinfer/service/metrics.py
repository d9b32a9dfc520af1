"""Prometheus export of what the server does: one place for every collector.

Two kinds of numbers leave the server:

* Events (requests, batches, sessions opened and ended, rejections) are pushed
  by the core through the ``Observer`` hooks. ``PrometheusObserver`` counts
  them in plain Python ints, each thread in its own shard, instead of
  prometheus_client's ``Counter``/``Histogram`` objects: with cached children
  those still cost 1-3 µs per update here (a lock, a value wrapper and a method
  chain each), about ten updates per step request, several percent of a
  one-step request. Here a hook is a thread-local lookup and a few integer
  adds; the exposition is built from the totals at scrape time.
* Levels (sessions by tier, slab occupancy, queue depth, device memory) are
  pulled: ``stats_provider()`` is called at scrape time, so the hot path pays
  nothing for them.

Every label value comes from a small fixed set (method names, status codes,
reasons, tiers) or from the served models; never from request content such as
a session id. Unknown reasons are counted as "other" so that a caller cannot
widen a label by accident.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from seqinfer.service.observer import Observer, RuntimeStats

log = logging.getLogger(__name__)

# Seconds: 50 µs to 5 s in a 1-2.5-5 progression (a one-step CPU request sits in
# the 100s of µs; a queue under overload reaches seconds).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)  # fmt: skip
# Requests per scheduler iteration: powers of two up to beyond any sane max_batch_size.
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(13))  # 1 .. 4096
# Timesteps in one request: powers of two up to a long chunk.
TIMESTEP_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(15))  # 1 .. 16384

TIERS: tuple[str, ...] = ("device", "host", "snapshot")
END_REASONS: tuple[str, ...] = ("closed", "expired", "evicted")
REJECT_REASONS: tuple[str, ...] = (
    "backpressure",
    "deadline",
    "invalid",
    "cancelled",
    "capacity",
    "draining",
    "step_gap",
)
# grpc.StatusCode names, spelled out so that this module needs no grpc import to validate.
STATUS_CODES: frozenset[str] = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)  # fmt: skip
# gRPC method names are code-defined, but the hook takes a str: cap the label's width anyway.
MAX_METHODS = 64
OTHER = "other"


class _Histogram:
    """Per-bucket (not cumulative) counts and a sum, written by one thread only."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value, i.e. the smallest `le` bucket holding it.
        # (The per-step hooks inline this line for speed; keep them in step with it.)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: _Histogram) -> None:
        """Adds another shard's histogram of the same buckets into this one."""
        for i, count in enumerate(list(other.counts)):
            self.counts[i] += count
        self.total += other.total

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs including +Inf, and the sum."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((_fmt_bound(bound), running))
        running += self.counts[-1]
        buckets.append(("+Inf", running))
        return buckets, self.total


def _fmt_bound(bound: float) -> str:
    # Same spelling as prometheus_client's own histograms ("5e-05", "0.001", "1.0").
    return repr(float(bound))


class _ModelCounters:
    """What one model's hooks accumulate (in one thread's shard)."""

    __slots__ = (
        "batch_seconds",
        "batch_size",
        "ended",
        "iterations",
        "latency",
        "opened",
        "queue_wait",
        "rejected",
        "steps",
        "timesteps",
    )

    def __init__(self) -> None:
        self.steps = 0
        self.timesteps = _Histogram(TIMESTEP_BUCKETS)
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.queue_wait = _Histogram(LATENCY_BUCKETS)
        self.batch_seconds = _Histogram(LATENCY_BUCKETS)
        self.batch_size = _Histogram(BATCH_SIZE_BUCKETS)
        self.iterations = 0
        self.opened = 0
        self.ended: dict[str, int] = dict.fromkeys(END_REASONS, 0)
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)


class _MethodCounters:
    """What one gRPC method's hooks accumulate (in one thread's shard)."""

    __slots__ = ("codes", "duration", "in_flight")

    def __init__(self) -> None:
        # A call may start on one thread and finish on another: a shard's in_flight
        # can go negative; only the sum over shards means anything.
        self.in_flight = 0
        self.codes: dict[str, int] = {}
        self.duration = _Histogram(LATENCY_BUCKETS)


class _Shard:
    """One thread's counters. Only that thread writes them; a scrape only reads."""

    __slots__ = ("methods", "models")

    def __init__(self) -> None:
        self.models: dict[str, _ModelCounters] = {}
        self.methods: dict[str, _MethodCounters] = {}


class PrometheusObserver(Observer):
    """Counts the core's events for export, with no lock on the hot path.

    Hooks run on the event loop and on engine worker threads. Each thread
    writes only its own shard (found through a ``threading.local``), so no
    update is lost whatever the interpreter's threading model, and a hook costs
    a thread-local lookup plus a few integer adds. A scrape sums the shards; a
    reading taken while a hook runs may miss that one event, which the next
    scrape includes. Shards of finished threads are kept: their counts are part
    of the totals, and the server's threads come from fixed pools.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _shards and _method_names, never a hook's update
        self._shards: list[_Shard] = []
        self._method_names: set[str] = set()

    # -- slow paths: first event of a thread, model or method ----------------------

    def _shard(self) -> _Shard:
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = _Shard()
            self._local.shard = shard
            with self._lock:
                self._shards.append(shard)
        return shard

    def _new_model(self, model: str) -> _ModelCounters:
        counters = _ModelCounters()
        self._shard().models[model] = counters
        return counters

    def _model(self, model: str) -> _ModelCounters:
        shard = self._shard()
        counters = shard.models.get(model)
        return counters if counters is not None else self._new_model(model)

    def _method(self, method: str) -> _MethodCounters:
        shard = self._shard()
        counters = shard.methods.get(method)
        if counters is None:
            with self._lock:
                if method not in self._method_names:
                    if len(self._method_names) >= MAX_METHODS:
                        method = OTHER
                    self._method_names.add(method)
            counters = shard.methods.setdefault(method, _MethodCounters())
        return counters

    # -- Observer hooks ------------------------------------------------------------
    # The per-step hooks inline the histogram update (bisect + two adds) rather than
    # calling _Histogram.observe: a Python call is a third of the cost of the update.

    def rpc_started(self, method: str) -> None:
        try:
            m = self._local.shard.methods[method]
        except (AttributeError, KeyError):
            m = self._method(method)
        m.in_flight += 1

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        try:
            m = self._local.shard.methods[method]
        except (AttributeError, KeyError):
            m = self._method(method)
        if code not in STATUS_CODES:
            code = "UNKNOWN"
        m.in_flight -= 1
        m.codes[code] = m.codes.get(code, 0) + 1
        h = m.duration
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds

    def request_completed(
        self, model: str, timesteps: int, latency_seconds: float, queue_seconds: float
    ) -> None:
        try:
            c = self._local.shard.models[model]
        except (AttributeError, KeyError):
            c = self._model(model)
        c.steps += timesteps
        h = c.timesteps
        h.counts[bisect_left(TIMESTEP_BUCKETS, timesteps)] += 1
        h.total += timesteps
        h = c.latency
        h.counts[bisect_left(LATENCY_BUCKETS, latency_seconds)] += 1
        h.total += latency_seconds
        h = c.queue_wait
        h.counts[bisect_left(LATENCY_BUCKETS, queue_seconds)] += 1
        h.total += queue_seconds

    def request_rejected(self, model: str, reason: str) -> None:
        c = self._model(model)
        if reason not in c.rejected:
            reason = OTHER
        c.rejected[reason] = c.rejected.get(reason, 0) + 1

    def batch_completed(self, model: str, requests: int, timesteps: int, seconds: float) -> None:
        try:
            c = self._local.shard.models[model]
        except (AttributeError, KeyError):
            c = self._model(model)
        c.iterations += 1
        h = c.batch_size
        h.counts[bisect_left(BATCH_SIZE_BUCKETS, requests)] += 1
        h.total += requests
        h = c.batch_seconds
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds

    def session_opened(self, model: str) -> None:
        self._model(model).opened += 1

    def session_ended(self, model: str, reason: str) -> None:
        c = self._model(model)
        if reason not in c.ended:
            reason = OTHER
        c.ended[reason] = c.ended.get(reason, 0) + 1

    # -- export -----------------------------------------------------------------

    def totals(self) -> tuple[dict[str, _ModelCounters], dict[str, _MethodCounters]]:
        """Sums over all threads' shards, as fresh counter objects (a consistent-enough copy)."""
        with self._lock:
            shards = list(self._shards)
        models: dict[str, _ModelCounters] = {}
        methods: dict[str, _MethodCounters] = {}
        for shard in shards:
            # list() first: the owning thread may add a key while we iterate.
            for name, src in list(shard.models.items()):
                dst = models.get(name)
                if dst is None:
                    dst = models[name] = _ModelCounters()
                dst.steps += src.steps
                dst.iterations += src.iterations
                dst.opened += src.opened
                for reason, count in list(src.ended.items()):
                    dst.ended[reason] = dst.ended.get(reason, 0) + count
                for reason, count in list(src.rejected.items()):
                    dst.rejected[reason] = dst.rejected.get(reason, 0) + count
                for attr in ("timesteps", "latency", "queue_wait", "batch_seconds", "batch_size"):
                    getattr(dst, attr).add(getattr(src, attr))
            for name, msrc in list(shard.methods.items()):
                mdst = methods.get(name)
                if mdst is None:
                    mdst = methods[name] = _MethodCounters()
                mdst.in_flight += msrc.in_flight
                for code, count in list(msrc.codes.items()):
                    mdst.codes[code] = mdst.codes.get(code, 0) + count
                mdst.duration.add(msrc.duration)
        return models, methods

    def collect_families(self, extra_models: Iterable[str] = ()) -> list[Metric]:
        """Metric families of the pushed events.

        ``extra_models`` (those the stats provider reports) get zero-valued
        series even before their first event, so that rates and dashboards
        show 0 rather than nothing for an idle model.
        """
        models, methods = self.totals()
        for model in extra_models:
            models.setdefault(model, _ModelCounters())

        requests = CounterMetricFamily(
            "seqinfer_grpc_requests",
            "gRPC calls (and stream items) finished, by method and status code.",
            labels=["method", "code"],
        )
        in_flight = GaugeMetricFamily(
            "seqinfer_grpc_requests_in_flight",
            "gRPC calls (and stream items) started and not yet finished.",
            labels=["method"],
        )
        duration = HistogramMetricFamily(
            "seqinfer_grpc_request_duration_seconds",
            "Time from a call's (or stream item's) start to its status, by method.",
            labels=["method"],
        )
        for method, m in sorted(methods.items()):
            in_flight.add_metric([method], m.in_flight)
            for code, count in sorted(m.codes.items()):
                requests.add_metric([method, code], count)
            duration.add_metric([method], *m.duration.snapshot())

        steps = CounterMetricFamily(
            "seqinfer_steps", "Timesteps computed, by model.", labels=["model"]
        )
        timesteps = HistogramMetricFamily(
            "seqinfer_request_timesteps",
            "Timesteps per computed step request.",
            labels=["model"],
        )
        latency = HistogramMetricFamily(
            "seqinfer_step_latency_seconds",
            "End-to-end time of a step request in the server: accepted to result ready.",
            labels=["model"],
        )
        queue_wait = HistogramMetricFamily(
            "seqinfer_queue_wait_seconds",
            "Time a step request waited in the scheduler queue before its batch started.",
            labels=["model"],
        )
        batch_seconds = HistogramMetricFamily(
            "seqinfer_batch_compute_seconds",
            "Engine time of one scheduler iteration (gather, GRU step, scatter).",
            labels=["model"],
        )
        batch_size = HistogramMetricFamily(
            "seqinfer_batch_size",
            "Step requests (sessions) computed together in one scheduler iteration.",
            labels=["model"],
        )
        iterations = CounterMetricFamily(
            "seqinfer_scheduler_iterations",
            "Scheduler iterations that ran the engine, by model.",
            labels=["model"],
        )
        opened = CounterMetricFamily(
            "seqinfer_sessions_opened",
            "Sessions created (open, start, fork, import), by model.",
            labels=["model"],
        )
        ended = CounterMetricFamily(
            "seqinfer_sessions_ended",
            "Sessions ended, by model and reason (closed, expired, evicted).",
            labels=["model", "reason"],
        )
        rejected = CounterMetricFamily(
            "seqinfer_rejected",
            "Step requests refused before computing, by model and reason.",
            labels=["model", "reason"],
        )
        for model, c in sorted(models.items()):
            steps.add_metric([model], c.steps)
            timesteps.add_metric([model], *c.timesteps.snapshot())
            latency.add_metric([model], *c.latency.snapshot())
            queue_wait.add_metric([model], *c.queue_wait.snapshot())
            batch_seconds.add_metric([model], *c.batch_seconds.snapshot())
            batch_size.add_metric([model], *c.batch_size.snapshot())
            iterations.add_metric([model], c.iterations)
            opened.add_metric([model], c.opened)
            for reason, count in c.ended.items():
                ended.add_metric([model, reason], count)
            for reason, count in c.rejected.items():
                rejected.add_metric([model, reason], count)
        return [
            requests, in_flight, duration, steps, timesteps, latency, queue_wait,
            batch_seconds, batch_size, iterations, opened, ended, rejected,
        ]  # fmt: skip


def _resident_bytes() -> int | None:
    """This process's resident set size, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _SeqinferCollector(Collector):
    """Builds every seqinfer_* family at scrape time: pulled levels plus pushed events."""

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
        info = InfoMetricFamily("seqinfer_build", "Version of the server and its runtime.")
        info.add_metric([], self._build_labels)
        yield info

        try:
            stats = list(self._stats_provider())
        except Exception:
            # A scrape must still show the counters; the gap in the levels is the signal.
            log.exception("metrics: stats provider failed; levels omitted from this scrape")
            stats = []

        sessions = GaugeMetricFamily(
            "seqinfer_sessions",
            "Open sessions by model and where their state lives (device, host, snapshot).",
            labels=["model", "tier"],
        )
        capacity = GaugeMetricFamily(
            "seqinfer_state_slab_capacity_slots",
            "Session slots allocated in the model's state slab.",
            labels=["model"],
        )
        used = GaugeMetricFamily(
            "seqinfer_state_slab_used_slots",
            "Slab slots holding a session's state.",
            labels=["model"],
        )
        slab_bytes = GaugeMetricFamily(
            "seqinfer_state_slab_bytes",
            "Bytes of the model's state slab tensor.",
            labels=["model"],
        )
        queue = GaugeMetricFamily(
            "seqinfer_queue_depth",
            "Step requests accepted and not yet computed.",
            labels=["model"],
        )
        device_memory = GaugeMetricFamily(
            "seqinfer_device_memory_allocated_bytes",
            "Memory allocated on a compute device: torch's allocator on CUDA; "
            "on CPU, the process's resident set size.",
            labels=["device"],
        )
        memory_by_device: dict[str, int] = {}
        for s in stats:
            tiers = dict.fromkeys(TIERS, 0)
            tiers.update(s.sessions_by_tier)
            for tier, count in tiers.items():
                sessions.add_metric([s.model, tier], count)
            capacity.add_metric([s.model], s.slab_capacity)
            used.add_metric([s.model], s.slab_used)
            slab_bytes.add_metric([s.model], s.slab_bytes)
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
        yield from (sessions, capacity, used, slab_bytes, queue, device_memory)
        yield from self._observer.collect_families(s.model for s in stats)


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class MetricsExporter:
    """A running /metrics endpoint; hand ``observer`` to the core, ``stop()`` on shutdown."""

    observer: PrometheusObserver
    port: int
    registry: CollectorRegistry
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def build_registry(
    observer: PrometheusObserver,
    stats_provider: Callable[[], Iterable[RuntimeStats]],
    *,
    version: str,
) -> CollectorRegistry:
    """A dedicated registry (never the global one: several servers may share a process)."""
    registry = CollectorRegistry(auto_describe=False)
    build_labels = {
        "version": version,
        "python_version": platform.python_version(),
        "grpc_version": _version_of("grpcio"),
        "torch_version": _version_of("torch"),
    }
    registry.register(_SeqinferCollector(observer, stats_provider, build_labels))
    # process_cpu_seconds_total, process_resident_memory_bytes, ...: read from /proc at scrape.
    ProcessCollector(registry=registry)
    return registry


class _MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow scraper never blocks another."""

    daemon_threads = True


class _MetricsHTTPServer6(_MetricsHTTPServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the log; Prometheus records failures."""


# How often the serving loop checks for stop(): bounds stop()'s latency.
_POLL_SECONDS = 0.05


def start_metrics_exporter(
    host: str,
    port: int,
    stats_provider: Callable[[], Iterable[RuntimeStats]],
    *,
    version: str,
) -> MetricsExporter:
    """Serve /metrics on host:port (port 0: an ephemeral port, see ``.port``) in a thread."""
    observer = PrometheusObserver()
    registry = build_registry(observer, stats_provider, version=version)
    # Not prometheus_client.start_http_server: its loop polls every 0.5 s, so each
    # stop() took half a second (felt in every test that starts a server).
    server_class = _MetricsHTTPServer6 if ":" in host else _MetricsHTTPServer
    server = make_server(
        host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_SECONDS},
        name="seqinfer-metrics",
        daemon=True,
    )
    thread.start()
    bound_port = int(server.server_address[1])
    log.info("metrics: serving http://%s:%d/metrics", host, bound_port)
    return MetricsExporter(observer, bound_port, registry, server, thread)
