"""The client and its CLI without a server: no torch, help text, error format."""

from __future__ import annotations

import socket
import subprocess
import sys

import typer
from typer.testing import CliRunner

from seqinfer.cli import client_cmds
from seqinfer.cli.common import TYPER_SETTINGS


def _app() -> typer.Typer:
    app = typer.Typer(**TYPER_SETTINGS)  # as seqinfer.cli.main builds it
    client_cmds.register(app)
    return app


CLIENT_MODULES = ("seqinfer.client", "seqinfer.client.aio", "seqinfer.cli.client_cmds")


def _imports_torch(*modules: str, block: bool = False) -> bool:
    """Whether importing ``modules`` in a fresh interpreter loads torch.

    ``block`` makes ``import torch`` fail there, as on a client-only install;
    the imports must then still succeed.
    """
    code = (
        "import importlib, sys\n"
        + ("sys.modules['torch'] = None\n" if block else "")
        + f"for name in {modules!r}: importlib.import_module(name)\n"
        + "from seqinfer.cli.main import app\n"
        + "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules"
        + " if sys.modules[m] is not None))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_client_and_cli_never_import_torch() -> None:
    assert not _imports_torch(*CLIENT_MODULES)
    assert not _imports_torch(*CLIENT_MODULES, block=True)
    # The probe can fail: a module that needs torch is seen.
    assert _imports_torch("seqinfer.service.engine")


def test_help_explains_inputs() -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["step", "--help"])
    assert result.exit_code == 0
    for flag in ("--json", "--npy", "--json-file", "--random", "--start", "--expected-step"):
        assert flag in result.stdout
    assert "[[f, ...], ...]" in result.stdout  # brackets survive rich markup
    assert "SEQINFER_ADDRESS" in result.stdout
    sessions = runner.invoke(_app(), ["session", "--help"])
    for command in ("open", "get", "close", "fork"):
        assert command in sessions.stdout


def test_unreachable_server_is_a_clean_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = CliRunner(env={"SEQINFER_ADDRESS": f"127.0.0.1:{port}"})
    result = runner.invoke(_app(), ["models", "--timeout", "2"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert result.stdout == ""


def test_usage_errors_exit_2() -> None:
    runner = CliRunner(env={"SEQINFER_ADDRESS": "127.0.0.1:1"})
    result = runner.invoke(_app(), ["step", "s", "--start", "--json", "[1.0]"])
    assert result.exit_code == 2
    assert result.stderr == "error: USAGE: --start needs --model\n"
