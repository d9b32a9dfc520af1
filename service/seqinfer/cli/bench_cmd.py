"""`seqinfer bench`: run the benchmark harness (``python -m benchmarks``) from a source checkout.

The harness lives in the repository's ``benchmarks/`` folder, not in the
installed package (it starts baseline servers and TorchServe, which no
deployment needs), so this command finds the checkout: the current directory
or the one the editable install points at. Every option is the harness's own;
``seqinfer bench --help`` prints them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _checkout() -> Path | None:
    """A directory holding benchmarks/cli.py: cwd, or the editable install's repo root."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        if (root / "benchmarks" / "cli.py").is_file():
            return root
    return None


def bench(ctx: typer.Context) -> None:
    """Measure seqinfer against the transport limit, a hand-written server and TorchServe.

    Writes benchmarks/results/<timestamp>.{json,md,png}. Options: --plan
    full|quick|smoke, --skip, --sessions, --publish, ... (see --help).
    """
    root = _checkout()
    if root is None:
        typer.echo(
            "error: the benchmark harness is not installed with the package; run "
            "`seqinfer bench` inside a seqinfer source checkout",
            err=True,
        )
        raise typer.Exit(2)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.cli import main

    raise typer.Exit(main(list(ctx.args), prog="seqinfer bench"))


def register(app: typer.Typer) -> None:
    app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        # --help goes to the harness's own parser, which knows the options.
        add_help_option=False,
    )(bench)
