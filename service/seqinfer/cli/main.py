"""The `seqinfer` command line.

Each command group lives in its own module and registers itself here. Client
commands must not import torch (only `serve` and model tooling do, lazily),
so that `seqinfer session ...` starts fast and works from a client-only install.
"""

from __future__ import annotations

import typer

from seqinfer.cli.common import TYPER_SETTINGS

app = typer.Typer(
    name="seqinfer",
    help="Stateful, batched GRU inference over gRPC. Start with `seqinfer serve`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    **TYPER_SETTINGS,
)


def _register_commands() -> None:
    from seqinfer.cli import health_cmd, serve

    serve.register(app)
    health_cmd.register(app)
    from seqinfer.cli import model_cmds

    model_cmds.register(app)
    from seqinfer.cli import demo

    demo.register(app)
    from seqinfer.cli import client_cmds

    client_cmds.register(app)
    from seqinfer.cli import bench_cmd

    bench_cmd.register(app)
    from seqinfer.cli import token_cmd

    token_cmd.register(app)
    from seqinfer.cli import sessions_cmd

    sessions_cmd.register(app)


_register_commands()


def main() -> None:
    app()
