"""`seqinfer health`: the container healthcheck, as a CLI command.

Imports only grpc and the health stubs (through seqinfer.service.healthcheck,
lazily), never torch.
"""

from __future__ import annotations

import typer

from seqinfer.client.options import ADDRESS_ENV

# The container sets SEQINFER_HEALTH_ADDRESS for its healthcheck; a user's
# shell sets SEQINFER_ADDRESS for every client command, this one included.
HEALTH_ADDRESS_ENV = "SEQINFER_HEALTH_ADDRESS"


def register(app: typer.Typer) -> None:
    """Adds the `health` command to the `seqinfer` app."""

    @app.command("health")
    def health(
        address: str | None = typer.Option(
            None,
            "--address",
            "-a",
            envvar=[HEALTH_ADDRESS_ENV, ADDRESS_ENV],
            show_envvar=True,
            help="host:port of the server's gRPC port [default: $SEQINFER_HEALTH_ADDRESS, "
            "else $SEQINFER_ADDRESS, else 127.0.0.1:$SEQINFER_PORT, else 127.0.0.1:50051].",
        ),
        service: str = typer.Option(
            "", "--service", help='Health service name; "" is the whole server.'
        ),
        timeout: float = typer.Option(3.0, "--timeout", help="Seconds to wait for the answer."),
        tls: bool = typer.Option(False, "--tls", help="Connect with TLS."),
        ca_file: str | None = typer.Option(None, "--ca-file", help="PEM roots for --tls."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
    ) -> None:
        """Exit 0 if the server reports SERVING on the gRPC health service, else 1."""
        from seqinfer.service.healthcheck import check, default_address

        address = address or default_address()
        result = check(address, service, timeout, tls=tls, ca_file=ca_file)
        if not quiet:
            line = f"{address} {service or '(server)'}: {result.status}"
            typer.echo(f"{line} ({result.detail})" if result.detail else line, err=True)
        raise typer.Exit(0 if result.ok else 1)
