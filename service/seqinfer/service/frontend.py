"""One front-end process of ``seqinfer serve --frontends K``: gRPC in, the engine process behind.

It decodes, checks and converts requests like the single-process server
(``grpc_front``: the same servicer, guard, health and reflection) and hands
every command to ``RemoteEngine``. It holds no session state, so any front
end serves any session, and one that dies loses nothing but its calls in
flight (their clients see UNAVAILABLE and retry with ``expected_step``).

Its gRPC call metrics are counted here and sent to the engine process as
snapshots (``metrics.frontends``), whose /metrics shows them labelled by
front end: a scrape of one port sees the whole server, and no request pays
an IPC message for its metrics.

Ports: all front ends bind the public port with SO_REUSEPORT, and the
kernel spreads connections (not requests) over them; each also binds a port
of its own, so that a client can spread its channels evenly (the client's
``addresses``). SIGHUP: the TLS files and the token file are read again
(``security``); the engine process re-reads the token file for the quotas.
SIGTERM: health turns NOT_SERVING, new work gets DRAINING, calls in flight
finish within the grace period, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from seqinfer.service import ipc
from seqinfer.service.config import Settings
from seqinfer.service.grpc_front import GrpcFront
from seqinfer.service.heap import freeze_startup_heap
from seqinfer.service.metrics.frontends import FrontendMetrics
from seqinfer.service.observer import NULL_OBSERVER, Observer
from seqinfer.service.remote_engine import RemoteEngine
from seqinfer.service.security import server_tls, token_table

log = logging.getLogger(__name__)
SERVING = "seqinfer-frontend: serving"


async def _main(settings: Settings, socket_path: str, index: int, counted: bool) -> int:
    """``counted``: the engine exports metrics, so this front end counts its calls for it."""
    engine = RemoteEngine(socket_path)
    await engine.start()
    observer: Observer = NULL_OBSERVER
    metrics: FrontendMetrics | None = None
    if counted:
        from seqinfer.service.metrics import PrometheusObserver

        counters = PrometheusObserver()
        metrics = FrontendMetrics(
            counters, lambda snapshot, tenants: engine.send_metrics(index, snapshot, tenants)
        )
        observer = counters
    front = GrpcFront(
        settings,
        engine,
        observer,
        token_table(settings),
        server_tls(settings),
        share_port=True,
    )
    await front.start()
    if metrics is not None:
        metrics.start()
    freeze_startup_heap()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    # The supervisor forwards its SIGHUP here: each front end holds its own TLS
    # and its own copy of the tokens (the guard); the engine holds the quotas.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: _reload(front))
    print(f"{SERVING} {index} port {front.port} own_port {front.own_port}", flush=True)
    await stop.wait()
    engine.begin_drain()
    await front.not_serving()
    await front.stop(settings.shutdown_grace_seconds)
    if metrics is not None:
        metrics.stop()
    await engine.shutdown()
    return 0


def _reload(front: GrpcFront) -> None:
    front.reload_certificates()
    front.reload_tokens()


def main() -> None:
    settings = Settings.model_validate_json(os.environ[ipc.SETTINGS_ENV])
    index, counted = int(sys.argv[1]), sys.argv[2:] == ["metrics"]
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s frontend-{index} %(name)s: %(message)s",
    )
    serve = _main(settings, os.environ[ipc.ENGINE_SOCKET_ENV], index, counted)
    if settings.frontend_loop == "uvloop":
        # Only the front ends: they are pure I/O and message decoding, where
        # the loop's own overhead shows; the engine's time is in its batches.
        import uvloop

        log.info("front end %d runs on uvloop %s", index, uvloop.__version__)
        sys.exit(uvloop.run(serve))
    sys.exit(asyncio.run(serve))
