"""The plain counters that the ``Observer`` hooks bump, and the observer that bumps them.

prometheus_client's ``Counter``/``Histogram`` objects cost 1-3 µs per update
even with cached label children (a lock, a value wrapper and a method chain
each), and a step request makes about ten updates; here a hook is a dict
lookup and a few integer adds, and ``families`` builds the exposition from
these numbers only when Prometheus scrapes.

One writer: every hook call site (api, scheduler, runtime) is event-loop code;
the engine thread runs only the GRU and slab copies and reports nothing. So
there is no lock and no per-thread copy. The scrape runs on an HTTP thread and
only reads; each table and bucket list is copied in one C-level call, which
the GIL keeps whole, so a reading taken while a hook runs may at most miss that
one event (the next scrape has it).

Every update below is a single ``+=`` that calls nothing between its read and
its write. On CPython with the GIL such an update is never split by a thread
switch, so even a hook called from some other thread loses no count
(tests/unit/test_metrics.py checks that with eight threads). Keep it so: a
call (``dict.get``, a method) inside an update would open that window. A
free-threaded interpreter would need a lock here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from seqinfer.service.observer import Observer

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

END_REASONS: tuple[str, ...] = ("closed", "expired", "evicted", "refused")
REJECT_REASONS: tuple[str, ...] = (
    "backpressure",
    "deadline",
    "invalid",
    "cancelled",
    "capacity",
    "draining",
    "step_gap",
    "quota",
    "store",
    "stale",
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
# Where an unknown reason or a method beyond MAX_METHODS is counted, so that a
# caller's bug cannot widen a label.
OTHER = "other"
# Front ends whose snapshots the engine process keeps (``frontends``): bounds that label too.
MAX_FRONTENDS = 256


class Histogram:
    """Per-bucket (not cumulative) counts and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value, i.e. the smallest `le` bucket
        # holding it. The hooks inline this line (a Python call is a third of the
        # cost of the update): keep them in step with it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[int], float]:
        """Running counts per bound, +Inf last, and the sum."""
        counts = self.counts.copy()
        return list(accumulate(counts)), self.total


class ModelCounters:
    """What one model's hooks accumulate."""

    __slots__ = (
        "batch_seconds",
        "batch_size",
        "ended",
        "iterations",
        "latency",
        "opened",
        "queue_wait",
        "rejected",
        "restore_seconds",
        "restored",
        "spilled",
        "steps",
        "timesteps",
    )

    def __init__(self) -> None:
        self.steps = 0
        self.timesteps = Histogram(TIMESTEP_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.iterations = 0
        self.opened = 0
        # Known reasons exist from the start, so that they export as 0, not as nothing.
        self.ended: dict[str, int] = dict.fromkeys(END_REASONS, 0)
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.spilled = 0
        self.restored = 0
        self.restore_seconds = Histogram(LATENCY_BUCKETS)


class MethodCounters:
    """What one gRPC method's hooks accumulate."""

    __slots__ = ("codes", "duration", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self.codes: dict[str, int] = {}
        self.duration = Histogram(LATENCY_BUCKETS)


def _bump(table: dict[str, int], key: str) -> None:
    """Slow path of ``table[key] += 1`` for a key not yet there."""
    table.setdefault(key, 0)  # one C call: two racing first events both count
    table[key] += 1


class PrometheusObserver(Observer):
    """Counts the core's events per model and per gRPC method, for ``families`` to export."""

    def __init__(self) -> None:
        self._models: dict[str, ModelCounters] = {}
        self._methods: dict[str, MethodCounters] = {}
        # Front end index -> its latest per-method snapshot (``serve --frontends K``).
        # Each entry is replaced whole, on the event loop; a scrape reads a copy.
        self._frontends: dict[str, dict[str, MethodCounters]] = {}
        # Front end index -> its latest calls by (tenant, method) and code (as ``_tenants``).
        self._frontend_tenants: dict[str, dict[tuple[str, str], dict[str, int]]] = {}
        # (tenant, method) -> {code: calls}; filled only with metrics_tenant_label on.
        self._tenants: dict[tuple[str, str], dict[str, int]] = {}

    def totals(self) -> tuple[dict[str, ModelCounters], dict[str, MethodCounters]]:
        """The per-model and per-method counters (copies of the tables; live counters)."""
        return dict(self._models), dict(self._methods)

    def tenant_totals(self) -> dict[tuple[str, str], dict[str, int]]:
        """Calls by (tenant, method) and status code (a copy of the table)."""
        return {key: codes.copy() for key, codes in self._tenants.items()}

    def frontend_totals(self) -> dict[str, dict[str, MethodCounters]]:
        """Each front end's latest per-method counters, by front end index (a copy)."""
        return dict(self._frontends)

    def frontend_tenant_totals(self) -> dict[str, dict[tuple[str, str], dict[str, int]]]:
        """Each front end's latest calls by (tenant, method) and code, by index (a copy)."""
        return dict(self._frontend_tenants)

    def set_frontend(
        self,
        frontend: str,
        methods: dict[str, MethodCounters],
        tenants: dict[tuple[str, str], dict[str, int]] | None = None,
    ) -> bool:
        """Keep ``methods`` (and ``tenants``, its per-tenant calls) as front end
        ``frontend``'s latest; False past MAX_FRONTENDS."""
        if frontend not in self._frontends and len(self._frontends) >= MAX_FRONTENDS:
            return False
        self._frontends[frontend] = methods
        if tenants:
            self._frontend_tenants[frontend] = tenants
        else:
            self._frontend_tenants.pop(frontend, None)
        return True

    # -- slow paths: the first event of a model or method ----------------------------
    # setdefault keeps the first table entry if two of these ever race.

    def _new_model(self, model: str) -> ModelCounters:
        return self._models.setdefault(model, ModelCounters())

    def _new_method(self, method: str) -> MethodCounters:
        if len(self._methods) >= MAX_METHODS:
            method = OTHER
        return self._methods.setdefault(method, MethodCounters())

    # -- Observer hooks ----------------------------------------------------------------
    # The histogram updates are Histogram.observe, inlined.

    def rpc_started(self, method: str) -> None:
        try:
            m = self._methods[method]
        except KeyError:
            m = self._new_method(method)
        m.in_flight += 1

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        try:
            m = self._methods[method]
        except KeyError:
            m = self._new_method(method)
        if code not in STATUS_CODES:
            code = "UNKNOWN"
        m.in_flight -= 1
        try:
            m.codes[code] += 1
        except KeyError:
            _bump(m.codes, code)
        h = m.duration
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds

    def tenant_call_finished(self, tenant: str, method: str, code: str) -> None:
        if code not in STATUS_CODES:
            code = "UNKNOWN"
        codes = self._tenants.get((tenant, method))
        if codes is None:
            codes = self._tenants.setdefault((tenant, method), {})
        _bump(codes, code)

    def request_completed(
        self, model: str, timesteps: int, latency_seconds: float, queue_seconds: float
    ) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
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
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        try:
            c.rejected[reason] += 1
        except KeyError:  # not a known reason
            _bump(c.rejected, OTHER)

    def batch_completed(self, model: str, requests: int, timesteps: int, seconds: float) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        c.iterations += 1
        h = c.batch_size
        h.counts[bisect_left(BATCH_SIZE_BUCKETS, requests)] += 1
        h.total += requests
        h = c.batch_seconds
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds

    def session_opened(self, model: str) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        c.opened += 1

    def session_ended(self, model: str, reason: str) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        try:
            c.ended[reason] += 1
        except KeyError:  # not a known reason
            _bump(c.ended, OTHER)

    def sessions_spilled(self, model: str, count: int) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        c.spilled += count

    def session_restored(self, model: str, seconds: float) -> None:
        try:
            c = self._models[model]
        except KeyError:
            c = self._new_model(model)
        c.restored += 1
        h = c.restore_seconds
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds
