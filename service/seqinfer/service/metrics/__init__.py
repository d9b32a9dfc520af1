"""Prometheus export of what the server does, in three parts.

* ``counters``: the plain numbers the ``Observer`` hooks bump on the hot path
  (``PrometheusObserver``), with the bucket bounds and the label value sets;
* ``families``: the table of exported families (name, type, help, labels),
  filled from those counters and the models' readings at scrape time;
* ``exporter``: the /metrics HTTP endpoint and its lifecycle
  (``start_metrics_exporter``), which server.py starts when metrics are on.

Importing this package imports prometheus_client; the core imports only
``seqinfer.service.observer``, so a server with metrics off never loads it.
"""

from seqinfer.service.metrics.counters import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    MAX_METHODS,
    TIMESTEP_BUCKETS,
    PrometheusObserver,
)
from seqinfer.service.metrics.exporter import (
    MetricsExporter,
    build_registry,
    start_metrics_exporter,
)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "MAX_METHODS",
    "TIMESTEP_BUCKETS",
    "MetricsExporter",
    "PrometheusObserver",
    "build_registry",
    "start_metrics_exporter",
]
