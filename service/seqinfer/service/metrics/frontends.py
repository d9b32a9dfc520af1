"""A front end's gRPC counters as plain data, so that the engine process can export them.

Under ``serve --frontends K`` the gRPC calls happen in the front-end
processes and the one /metrics endpoint lives in the engine process. A
message per call would put metrics on the IPC path of every request, so each
front end counts its calls in its own ``PrometheusObserver`` and sends the
engine the whole of its gRPC counters now and then (``FrontendMetrics``):
cumulative numbers, so a lost or late snapshot costs only freshness, and the
engine keeps the latest one per front end.

A snapshot is ``{method: (in_flight, {code: count}, [bucket counts], sum)}``:
builtins only, as ``ipc`` wants, with the buckets of ``LATENCY_BUCKETS``;
beside it go the calls by tenant (``metrics_tenant_label``), as
``[(tenant, method, {code: count}), ...]``. ``methods_from`` and
``tenants_from`` check them before the engine keeps them, so a malformed one
is refused whole rather than half-exported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from seqinfer.service.metrics.counters import (
    LATENCY_BUCKETS,
    MAX_METHODS,
    STATUS_CODES,
    MethodCounters,
    PrometheusObserver,
)

log = logging.getLogger(__name__)

Snapshot = dict[str, tuple[int, dict[str, int], list[int], float]]
# Calls by tenant (with metrics_tenant_label): [(tenant, method, {code: count}), ...].
TenantSnapshot = list[tuple[str, str, dict[str, int]]]
# How often a front end sends its counters: a scrape sees them at most this late.
PUSH_SECONDS = 1.0


def snapshot(observer: PrometheusObserver) -> Snapshot:
    """``observer``'s per-method counters, copied into plain data."""
    _, methods = observer.totals()
    return {
        method: (m.in_flight, m.codes.copy(), m.duration.counts.copy(), m.duration.total)
        for method, m in methods.items()
    }


def tenant_snapshot(observer: PrometheusObserver) -> TenantSnapshot:
    """``observer``'s calls by tenant, as plain data (empty without metrics_tenant_label)."""
    return [(tenant, method, codes) for (tenant, method), codes in observer.tenant_totals().items()]


def tenants_from(data: object) -> dict[tuple[str, str], dict[str, int]]:
    """The per-tenant calls a tenant snapshot describes; ValueError if it is not one."""
    if not isinstance(data, list):
        raise ValueError("a tenant snapshot is a list of (tenant, method, codes)")
    tenants: dict[tuple[str, str], dict[str, int]] = {}
    for entry in data:
        ok = isinstance(entry, tuple | list) and len(entry) == 3
        tenant, method, codes = entry if ok else ("", "", None)
        ok = (
            ok
            and isinstance(tenant, str)
            and isinstance(method, str)
            and isinstance(codes, dict)
            and all(c in STATUS_CODES and isinstance(n, int) for c, n in codes.items())
        )
        if not ok or not isinstance(codes, dict):
            raise ValueError(f"malformed tenant snapshot entry {entry!r:.80}")
        tenants[(tenant, method)] = dict(codes)
    return tenants


def methods_from(data: object) -> dict[str, MethodCounters]:
    """The counters a snapshot describes; ValueError if it is not one."""
    if not isinstance(data, dict) or len(data) > MAX_METHODS:
        raise ValueError("a metrics snapshot is a dict of at most MAX_METHODS methods")
    methods: dict[str, MethodCounters] = {}
    for method, entry in data.items():
        in_flight, codes, counts, total = entry
        ok = (
            isinstance(method, str)
            and isinstance(in_flight, int)
            and isinstance(codes, dict)
            and all(c in STATUS_CODES and isinstance(n, int) for c, n in codes.items())
            and isinstance(counts, list)
            and len(counts) == len(LATENCY_BUCKETS) + 1
            and all(isinstance(n, int) for n in counts)
            and isinstance(total, float)
        )
        if not ok:
            raise ValueError(f"malformed metrics snapshot entry for {method!r}")
        m = MethodCounters()
        m.in_flight = in_flight
        m.codes = dict(codes)
        m.duration.counts = list(counts)
        m.duration.total = total
        methods[method] = m
    return methods


class FrontendMetrics:
    """Sends ``observer``'s snapshot through ``send`` every PUSH_SECONDS, and once at ``stop``."""

    def __init__(
        self,
        observer: PrometheusObserver,
        send: Callable[[Snapshot, TenantSnapshot], None],
        interval: float = PUSH_SECONDS,
    ) -> None:
        self.observer = observer
        self._send = send
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self) -> None:
        self._send(snapshot(self.observer), tenant_snapshot(self.observer))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.push()
            except Exception:  # metrics must never take a front end down
                log.exception("metrics: sending the front end's counters failed")

    def stop(self) -> None:
        """Stops the timer and sends the final counters (after the calls have finished)."""
        if self._task is not None:
            self._task.cancel()
        self.push()
