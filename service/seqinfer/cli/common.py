"""What every `seqinfer` command shares: its Typer settings, the client options, tables.

Help is rendered by click's plain formatter, not rich markup: rich treats
``[...]`` as a style tag and silently deletes it, and the help texts are full
of brackets (``[default: 50051]``, ``[[f, ...], ...]``). Plain text also reads
the same in a pipe, a log and a terminal.

Nothing here imports torch or numpy, so every command can use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer

from seqinfer.client.options import ADDRESS_ENV

# Passed to every typer.Typer of the CLI (a sub-app renders its own help).
TYPER_SETTINGS: dict[str, Any] = {"rich_markup_mode": None}

AddressOpt = Annotated[
    str,
    typer.Option(
        "--address",
        "-a",
        envvar=ADDRESS_ENV,
        show_envvar=True,
        help="host:port of the seqinfer server.",
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the answer, retries included.")
]


class OutputFormat(StrEnum):
    """How a listing command prints: a table for people, JSON for scripts."""

    table = "table"
    json = "json"


OutputOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table: aligned columns for reading; json: the full records, for scripts.",
    ),
]


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart, headers in capitals (as kubectl prints)."""
    cells = [[str(h).upper() for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
