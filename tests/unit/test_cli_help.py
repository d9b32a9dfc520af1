"""Every `seqinfer` command's --help shows its defaults and its bracketed text.

Rich markup once ate every ``[...]`` in the help (``serve --port`` read "gRPC
port; 0 = any free ."), and defaults vanished with it. This walks the whole
command tree, renders each --help and looks for what each option declares:
its default, its env var, and every bracketed phrase of its help text.
Whitespace is ignored in the comparison, because the formatter wraps lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum

import pytest
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.testing import CliRunner

from seqinfer.cli.main import app

ROOT = typer.main.get_command(app)
Command = TyperCommand | TyperGroup


def _commands(cmd: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, TyperGroup):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _lookup(path: tuple[str, ...]) -> Command:
    cmd = ROOT
    for name in path:
        assert isinstance(cmd, TyperGroup)
        cmd = cmd.commands[name]
    return cmd


# `seqinfer bench --help` is the benchmark harness's own argparse help.
PATHS = [p for p in _commands(ROOT) if _lookup(p).add_help_option]


def _bracketed(text: str) -> list[str]:
    """Every top-level [...] phrase, nested brackets included: "[[f, ...], ...]"."""
    found, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _default_text(param: TyperOption) -> str | None:
    """What click shows as the default, derived from the declaration (None: nothing)."""
    if param.show_default is False or param.default is None:
        return None
    value = param.default
    if param.is_flag and param.is_bool_flag:
        if param.secondary_opts:
            return (param.opts[0] if value else param.secondary_opts[0]).lstrip("-")
        return None  # a lone flag (--tls) shows no default
    if isinstance(value, Enum):
        return str(value.value)
    return str(value) if str(value) != "" else None


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_tree_is_walked() -> None:
    names = {" ".join(p) for p in PATHS}
    expected_names = ("serve", "health", "demo", "models", "step", "session open", "model import")
    for expected in (*expected_names, "sessions list", "sessions export", "sessions import"):
        assert expected in names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "seqinfer")
def test_help_shows_defaults_env_vars_and_brackets(path: tuple[str, ...]) -> None:
    cmd = _lookup(path)
    shown = _squash(_help(path))
    for phrase in _bracketed(cmd.help or ""):
        assert _squash(phrase) in shown, f"{phrase!r} missing from `{' '.join(path)} --help`"
    for param in cmd.params:
        assert isinstance(param, TyperOption | TyperArgument)
        for phrase in _bracketed(getattr(param, "help", None) or ""):
            assert _squash(phrase) in shown, f"{param.name}: {phrase!r} missing"
        if not isinstance(param, TyperOption):
            continue
        default = _default_text(param)
        if default is not None:
            assert _squash(f"default: {default}") in shown, f"{param.name}: default {default!r}"
        if param.show_envvar and param.envvar:
            names = [param.envvar] if isinstance(param.envvar, str) else param.envvar
            assert _squash(f"env var: {', '.join(names)}") in shown, f"{param.name}: env var"


def test_serve_port_help_reads_as_written() -> None:
    text = " ".join(_help(("serve",)).split())
    assert "gRPC port; 0 = any free [default: 50051]." in text
    assert "Prometheus /metrics port; 0 disables [default: 9464]." in text


def test_step_help_keeps_json_shapes() -> None:
    text = " ".join(_help(("step",)).split())
    assert "[[f, ...], ...] (T rows of features) or [f, ...] (one row)" in text
    assert "\\[" not in text  # no leftover escapes from the rich-markup days


def test_client_commands_show_the_address_env_var() -> None:
    for path in (("models",), ("demo",), ("step",), ("session", "get"), ("health",)):
        assert "SEQINFER_ADDRESS" in _help(path), path
        assert "-a, --address" in _help(path), path
