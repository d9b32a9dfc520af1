"""`seqinfer serve`: run the server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of settings (see README).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1].")] = None,
    port: Annotated[
        int | None, typer.Option(help="gRPC port; 0 = any free [default: 50051].")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port; 0 disables [default: 9464].")
    ] = None,
    metrics_host: Annotated[str | None, typer.Option(help="Metrics bind address.")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N [default: auto].")
    ] = None,
    model_repository: Annotated[
        Path | None, typer.Option(help="Directory of model directories to serve.")
    ] = None,
    default_model: Annotated[
        str | None, typer.Option(help="Model used when none is named.")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Sessions per batch.")] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="Wait for a fuller batch (ms) when idle.")
    ] = None,
    max_sessions: Annotated[int | None, typer.Option(help="Open sessions per model.")] = None,
    idle_ttl_seconds: Annotated[
        float | None, typer.Option(help="Default session idle TTL; 0 = never.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG | INFO | WARNING | ERROR.")] = None,
    durability: Annotated[
        str | None,
        typer.Option(help="none | snapshot | write-through: keep sessions across restarts."),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Directory of the session store (with --durability).")
    ] = None,
    snapshot_interval_seconds: Annotated[
        float | None, typer.Option(help="Seconds between snapshots; 0 = on shutdown only.")
    ] = None,
    sync_commits: Annotated[
        bool | None,
        typer.Option(
            "--sync-commits/--no-sync-commits",
            help="write-through: fsync each batch's commit [default: on].",
        ),
    ] = None,
    device_sessions: Annotated[
        int | None,
        typer.Option(help="Slab slots per model; idle sessions beyond spill to the store."),
    ] = None,
    restore: Annotated[
        str | None, typer.Option(help="eager | lazy: restore sessions at start or on first use.")
    ] = None,
    frontends: Annotated[
        str | None,
        typer.Option(help="gRPC front-end processes (a number, or auto) [default: auto]."),
    ] = None,
) -> None:
    """Serve the built-in models (and --model-repository) over gRPC.

    Settings come from defaults < --config YAML < SEQINFER_* env < these flags.
    SIGTERM/SIGINT drain gracefully: health turns NOT_SERVING, new work gets
    UNAVAILABLE, accepted work finishes, then the process exits 0.
    """
    from seqinfer.service.config import ConfigError, load_settings
    from seqinfer.service.errors import ModelLoadError
    from seqinfer.service.tenants import TokenFileError

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            device=device,
            model_repository=model_repository,
            default_model=default_model,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            max_sessions=max_sessions,
            idle_ttl_seconds=idle_ttl_seconds,
            log_level=log_level,
            durability=durability,
            state_dir=state_dir,
            snapshot_interval_seconds=snapshot_interval_seconds,
            sync_commits=sync_commits,
            device_sessions=device_sessions,
            restore=restore,
            frontends=None if frontends in (None, "auto") else _count(frontends),
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from seqinfer.service.supervisor import Supervisor, frontend_count

    count = frontend_count(settings)
    if count:
        raise typer.Exit(asyncio.run(Supervisor(settings, count).run()))
    from seqinfer.service.server import SeqinferServer

    try:
        asyncio.run(SeqinferServer(settings).serve_forever())
    except TokenFileError as exc:  # a setting's file: a configuration error
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except (ModelLoadError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _count(text: str) -> int | str:
    # Validated with the settings (a clear error naming the setting); pass ints through.
    return int(text) if text.isdigit() else text


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=False)(serve)
