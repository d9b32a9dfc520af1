"""Wiring and lifecycle: load models, start runtimes, serve gRPC, health and reflection, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from importlib import metadata

import torch

from seqinfer.service.commits import attach_write_through
from seqinfer.service.config import Settings, torch_thread_count
from seqinfer.service.durability import Durability
from seqinfer.service.engine_client import LocalEngine
from seqinfer.service.errors import ModelLoadError
from seqinfer.service.grpc_front import GrpcFront
from seqinfer.service.heap import freeze_startup_heap
from seqinfer.service.models.spec import LoadedModel
from seqinfer.service.observer import NULL_OBSERVER, Observer, RuntimeStats
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.security import metrics_tls, server_tls, token_table
from seqinfer.service.store import StateStore
from seqinfer.service.tenants import TokenTable

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device", f"{name} requested but CUDA is not available")
    return device


def version() -> str:
    try:
        return metadata.version("seqinfer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def load_served_models(settings: Settings) -> list[LoadedModel]:
    """Built-ins plus the repository; broken models are logged and skipped unless strict."""
    from seqinfer.service.models.registry import load_models

    models, errors = load_models(settings.model_repository, settings.strict_models)
    for error in errors:
        log.error("model not loaded: %s", error)
    return models


class SeqinferServer:
    """A running seqinfer server. ``start``/``stop`` from inside an event loop."""

    def __init__(
        self,
        settings: Settings,
        models: list[LoadedModel] | None = None,
        observer: Observer | None = None,
    ) -> None:
        """``models`` replaces loading from settings; ``observer`` replaces the
        Prometheus exporter (for embedding and tests)."""
        self.settings = settings
        self._models = models
        self._own_observer = observer is not None
        self.observer: Observer = observer or NULL_OBSERVER
        self.engine: LocalEngine | None = None
        self.port = 0
        self.metrics_port = 0
        self._front: GrpcFront | None = None
        self._metrics: object | None = None
        self._durability: Durability | None = None
        self._stopped = asyncio.Event()
        self.timed_out = False  # the shutdown deadline came before the drain's end
        self.unanswered = 0  # accepted steps cancelled at that deadline

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def runtimes(self) -> list[ModelRuntime]:
        return [] if self.engine is None else self.engine.runtimes

    def stats(self) -> list[RuntimeStats]:
        return [runtime.stats() for runtime in self.runtimes]

    async def start(self) -> None:
        # Read before the models: a bad file stops the server at once.
        tls = server_tls(self.settings)
        tokens = token_table(self.settings)
        await self.start_engine(tokens)
        assert self.engine is not None
        front = GrpcFront(self.settings, self.engine, self.observer, tokens, tls)
        await front.start()
        self.port = front.port
        self._front = front
        log.info(
            "seqinfer %s serving %s on %s (device %s)",
            version(),
            ", ".join(r.key for r in self.runtimes),
            self.address,
            self.runtimes[0].device,
        )

    async def start_engine(self, tokens: TokenTable | None) -> None:
        """The engine side alone: models, runtimes, metrics (the engine process runs only this)."""
        settings = self.settings
        torch.set_num_threads(torch_thread_count(settings))
        device = resolve_device(settings.device)
        models = self._models if self._models is not None else load_served_models(settings)
        if not models:
            raise ModelLoadError("models", "no model could be loaded; nothing to serve")
        if settings.metrics_port and not self._own_observer:
            from seqinfer.service.metrics import start_metrics_exporter

            exporter = start_metrics_exporter(
                settings.metrics_host,
                settings.metrics_port,
                self.stats,
                version=version(),
                tls=metrics_tls(settings),
            )
            self._metrics = exporter
            self.observer = exporter.observer
            self.metrics_port = exporter.port
        runtimes = [ModelRuntime(m, settings, device, self.observer) for m in models]
        default = settings.default_model or _default_model_name(models)
        tenants = None if tokens is None else tokens.tenants
        self.engine = LocalEngine(runtimes, settings, self.observer, default, tenants)
        self.engine.router.model(default)  # fail at start-up, not on the first request
        for runtime in runtimes:
            await runtime.start()
        if settings.durability != "none":
            write_through = settings.durability == "write-through"
            store = await asyncio.to_thread(_open_store, settings, write_through)
            self._durability = Durability(
                store, runtimes, settings.snapshot_interval_seconds, write_through
            )
            if write_through:
                attach_write_through(self._durability, runtimes, self.observer)
            if settings.device_sessions or settings.restore == "lazy":
                from seqinfer.service.lazy_restore import lazy_restore
                from seqinfer.service.tiering import Tiering

                tierings = [Tiering(r, self._durability, self.observer) for r in runtimes]
            if settings.restore == "lazy":
                await lazy_restore(self._durability, tierings)
            else:
                # Before serving: a client's first step finds its session already back.
                await self._durability.restore()
            self._durability.start()

    def reload_certificates(self) -> bool:
        """Re-read the TLS files for new connections (SIGHUP); False keeps the old ones."""
        return self._front is not None and self._front.reload_certificates()

    def reload_tokens(self) -> bool:
        """Re-read the token file (SIGHUP): the guard's tokens, the engine's quotas and
        model lists. False (logged) keeps the old table; sessions are never touched."""
        if self._front is None or self.engine is None:
            return False
        table = self._front.reload_tokens()
        if table is None:
            return False
        self.engine.set_tenants(table.tenants)
        return True

    def reload(self) -> None:
        """SIGHUP: the TLS files, then the token file; each kept as it was if refused."""
        self.reload_certificates()
        if self.settings.auth_token_file is not None:
            self.reload_tokens()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new work (UNAVAILABLE/DRAINING), NOT_SERVING, finish accepted
        work, close; all within one deadline ``grace`` seconds away.

        Accepted steps get until the deadline; calls still open after their
        work is done (a client that holds a stream open) get what is left of
        it. At the deadline gRPC cancels every call still open. A batch still
        computing then cannot be interrupted (Python cannot stop a thread), so
        its runtime is left as it is, ``timed_out`` is set and ``unanswered``
        counts the steps that were cancelled; ``serve_forever`` then ends the
        process.
        """
        if self.engine is None or self._stopped.is_set():
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Refuse first: once health reads NOT_SERVING, no new step is accepted.
        assert self.engine is not None
        self.engine.begin_drain()
        if self._front is not None:
            await self._front.not_serving()
        drains = [loop.create_task(runtime.drain()) for runtime in self.runtimes]
        _, pending = await asyncio.wait(drains, timeout=max(0.0, deadline - loop.time()))
        if pending:
            self.timed_out = True
            self.unanswered = sum(
                r.scheduler.queue_depth + r.scheduler.in_flight for r in self.runtimes
            )
            log.warning(
                "shutdown grace (%.1fs) ended with %d accepted steps unanswered; cancelling them",
                grace,
                self.unanswered,
            )
            for task in pending:
                task.cancel()
        if self._front is not None:
            await self._front.stop(max(0.0, deadline - loop.time()))
        if self._durability is not None:
            # After a drain cut short a batch may still compute, and a read
            # queued behind it would never run: the last periodic snapshot stands.
            if pending:
                log.warning("shutdown timed out: sessions not snapshotted at shutdown")
            await self._durability.close(final=not pending)
        if not pending:
            for runtime in self.runtimes:
                await runtime.stop()
        if self._metrics is not None:
            self._metrics.stop()  # type: ignore[attr-defined]
        self._front = None
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and return; SIGHUP reloads TLS and tokens.

        If the grace period ended with steps unanswered, the process exits 1
        here: an engine thread still computing would keep Python from exiting.
        """
        await self.start()
        freeze_startup_heap()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        print(f"seqinfer: serving on {self.address}", flush=True)
        await stop_requested.wait()
        log.info("signal received: draining")
        await self.stop()
        if self.timed_out:
            log.error("exiting with %d steps cancelled at the shutdown deadline", self.unanswered)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        log.info("stopped")


def _default_model_name(models: list[LoadedModel]) -> str:
    from seqinfer.service.models.builtin import DEFAULT_MODEL_NAME

    names = {m.spec.name for m in models}
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in names else models[0].spec.name


def _open_store(settings: Settings, write_through: bool) -> StateStore:
    """The store the settings name; a Redis that cannot be reached fails start-up
    (StoreUnavailable) rather than serving sessions it could never keep."""
    if settings.state_store == "redis":
        from seqinfer.service.store_redis import RedisStore

        return RedisStore(settings.redis_url, settings.redis_key_prefix)
    from seqinfer.service.store import SqliteStore

    assert settings.state_dir is not None  # Settings requires it
    return SqliteStore(
        settings.state_dir, "FULL" if write_through and settings.sync_commits else "NORMAL"
    )
