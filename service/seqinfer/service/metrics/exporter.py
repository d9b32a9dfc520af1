"""The /metrics HTTP endpoint of one server: its registry, its thread, start and stop.

The registry is dedicated to one server (never prometheus_client's global
one), so several servers can run in one process, as the tests do. The
endpoint runs in its own thread so that a scrape never waits for the event
loop; it only reads the counters (see ``counters``).
"""

from __future__ import annotations

import logging
import platform
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.process_collector import ProcessCollector

from seqinfer.service.metrics.counters import PrometheusObserver
from seqinfer.service.metrics.families import SeqinferCollector
from seqinfer.service.observer import RuntimeStats

log = logging.getLogger(__name__)

# How often the serving loop checks for stop(): bounds stop()'s latency.
_POLL_SECONDS = 0.05


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_registry(
    observer: PrometheusObserver,
    stats_provider: Callable[[], Iterable[RuntimeStats]],
    *,
    version: str,
) -> CollectorRegistry:
    """The seqinfer families plus prometheus_client's process_* ones, in a fresh registry."""
    registry = CollectorRegistry(auto_describe=False)
    build_labels = {
        "version": version,
        "python_version": platform.python_version(),
        "grpc_version": _version_of("grpcio"),
        "torch_version": _version_of("torch"),
    }
    registry.register(SeqinferCollector(observer, stats_provider, build_labels))
    # process_cpu_seconds_total, process_resident_memory_bytes, ...: read from /proc at scrape.
    ProcessCollector(registry=registry)
    return registry


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


class _MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow scraper never blocks another."""

    daemon_threads = True


class _MetricsHTTPServer6(_MetricsHTTPServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would flood the log; Prometheus records failures."""


def start_metrics_exporter(
    host: str,
    port: int,
    stats_provider: Callable[[], Iterable[RuntimeStats]],
    *,
    version: str,
    tls: ssl.SSLContext | None = None,
) -> MetricsExporter:
    """Serve /metrics on host:port (port 0: an ephemeral port, see ``.port``) in a thread.

    ``tls``: serve HTTPS only. The handshake is left to the first read, in the
    scrape's own thread, so a client that connects and never speaks does not
    hold up the accept loop (prometheus_client's own TLS does it in accept).
    """
    observer = PrometheusObserver()
    registry = build_registry(observer, stats_provider, version=version)
    # Not prometheus_client.start_http_server: its loop polls every 0.5 s, so each
    # stop() took half a second (felt in every test that starts a server).
    server_class = _MetricsHTTPServer6 if ":" in host else _MetricsHTTPServer
    server = make_server(
        host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    if tls is not None:
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_SECONDS},
        name="seqinfer-metrics",
        daemon=True,
    )
    thread.start()
    bound_port = int(server.server_address[1])
    scheme = "http" if tls is None else "https"
    log.info("metrics: serving %s://%s:%d/metrics", scheme, host, bound_port)
    return MetricsExporter(observer, bound_port, registry, server, thread)
