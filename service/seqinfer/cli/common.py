"""What every `seqinfer` command shares: its Typer settings, the client options, tables.

Help is rendered by click's plain formatter, not rich markup: rich treats
``[...]`` as a style tag and silently deletes it, and the help texts are full
of brackets (``[default: 50051]``, ``[[f, ...], ...]``). Plain text also reads
the same in a pipe, a log and a terminal.

Nothing here imports torch or numpy, so every command can use it.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from seqinfer.client.options import ADDRESS_ENV, ADDRESSES_ENV
from seqinfer.client.security import TOKEN_ENV

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


def _pem_file(flag: str, help_text: str) -> Any:
    """A ``--flag PATH`` option for a PEM file that must exist (typer checks it: exit 2)."""
    return Annotated[
        Path | None,
        typer.Option(flag, exists=True, dir_okay=False, readable=True, help=help_text),
    ]


# The options every client command takes to reach a TLS server (or several
# front ends of one) and prove who it is; `security_options` adds them, so
# they are spelled out once.
_SECURITY_OPTIONS: dict[str, Any] = {
    "addresses": Annotated[
        str | None,
        typer.Option(
            "--addresses",
            envvar=ADDRESSES_ENV,
            show_envvar=True,
            help="ip:port,ip:port of one server's front ends (serve --frontends prints "
            "their own ports), instead of --address: calls are spread round-robin.",
        ),
    ],
    "tls": Annotated[
        bool,
        typer.Option(
            "--tls", help="Use TLS, checking the server against the system's CAs (or --ca)."
        ),
    ],
    "ca": _pem_file("--ca", "PEM CA certificates to check the server against (implies --tls)."),
    "cert": _pem_file("--cert", "PEM client certificate, for mutual TLS (needs --key)."),
    "key": _pem_file("--key", "PEM private key of --cert."),
    "token": Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            show_envvar=True,
            help="Bearer token sent with every call (prefer the environment variable: "
            "a command line is visible to other users).",
        ),
    ],
}
_SECURITY_DEFAULTS: dict[str, Any] = {"tls": False, "ca": None, "cert": None, "key": None}

F = TypeVar("F", bound=Callable[..., Any])


def security_options(fn: F) -> F:
    """Gives a client command ``--addresses --tls --ca --cert --key --token``, as ``security``.

    ``fn`` takes ``security: dict[str, Any]``: the keyword arguments for
    ``Client`` (certificates read from their files; ``addresses`` split at
    commas, None when not given). Typer reads the
    wrapper's signature, so the options appear in ``--help`` as if written
    out in each command.
    """
    sig = inspect.signature(fn, eval_str=True)
    kept = [p for p in sig.parameters.values() if p.name != "security"]
    added = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
            default=_SECURITY_DEFAULTS.get(name),
        )
        for name, kind in _SECURITY_OPTIONS.items()
    ]  # fmt: skip

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tls, ca, cert, key = (kwargs.pop(n) for n in ("tls", "ca", "cert", "key"))
        addresses = kwargs.pop("addresses")
        security = {
            "addresses": split_addresses(addresses) if addresses else None,
            "tls": tls,
            "root_certificates": ca.read_bytes() if ca is not None else None,
            "client_certificate": cert.read_bytes() if cert is not None else None,
            "client_key": key.read_bytes() if key is not None else None,
            "token": kwargs.pop("token") or None,
        }
        return fn(*args, security=security, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in kept},
        **_SECURITY_OPTIONS,
    }
    return wrapper  # type: ignore[return-value]


def split_addresses(text: str) -> list[str]:
    """``a:1, b:2`` -> ``["a:1", "b:2"]``; empty entries (a trailing comma) are dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


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
