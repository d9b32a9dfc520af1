"""Every client command finds the server through SEQINFER_ADDRESS or -a, and
`seqinfer models` prints a table for people and JSON for scripts."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from seqinfer.cli.main import app
from seqinfer.service.models.builtin import pydoc_chars
from tests.support import ServerThread, make_model, running_server

# Variables that would otherwise point a command somewhere else.
UNSET = {"SEQINFER_ADDRESS": None, "SEQINFER_HEALTH_ADDRESS": None, "SEQINFER_PORT": None}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_server([pydoc_chars(), make_model("dense", name="tiny")]) as server:
        yield server


@pytest.fixture
def dead_address() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _cli(*args: str, **env: str) -> object:
    return CliRunner(env={**UNSET, **env}).invoke(app, list(args))


def test_health_honours_seqinfer_address(server: ServerThread) -> None:
    result = _cli("health", "--timeout", "10", SEQINFER_ADDRESS=server.address)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"{server.address} (server): SERVING")


def test_health_address_wins_over_the_client_address(
    server: ServerThread, dead_address: str
) -> None:
    # The container's healthcheck setting is the more specific one.
    env = {"SEQINFER_HEALTH_ADDRESS": server.address, "SEQINFER_ADDRESS": dead_address}
    assert _cli("health", "--timeout", "10", **env).exit_code == 0
    flag = _cli("health", "-a", dead_address, "--timeout", "2", SEQINFER_ADDRESS=server.address)
    assert flag.exit_code == 1 and flag.stderr.startswith(dead_address)


def test_demo_honours_seqinfer_address_and_short_a(server: ServerThread, dead_address: str) -> None:
    args = ("demo", "--length", "5", "--seed", "1", "--timeout", "10")
    by_env = _cli(*args, SEQINFER_ADDRESS=server.address)
    assert by_env.exit_code == 0, by_env.output
    assert f"on pydoc-chars:1 at {server.address}" in by_env.stderr
    by_flag = _cli(*args, "-a", server.address, SEQINFER_ADDRESS=dead_address)
    assert by_flag.exit_code == 0, by_flag.output
    assert by_flag.stdout == by_env.stdout  # same seed, same server, same text


def test_models_prints_a_table_by_default(server: ServerThread) -> None:
    result = _cli("models", SEQINFER_ADDRESS=server.address)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAME", "VERSION", "INPUT", "GRU", "OUTPUT", "DTYPE", "DEVICE", "SESSIONS"
    ]  # fmt: skip
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["tiny"] == ["tiny", "1", "dense", "8", "16x2", "logits", "5", "float32", "cpu",
                               "0/1000000"]  # fmt: skip
    assert by_name["pydoc-chars"][2:5] == ["tokens", "97", "256x2"]
    # Columns line up: every row's second column starts where the header's does.
    at = header.index("VERSION")
    assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows)


@pytest.mark.parametrize("flag", [("--output", "json"), ("-o", "json"), ("-o", "JSON")])
def test_models_json_for_scripts(server: ServerThread, flag: tuple[str, str]) -> None:
    result = _cli("models", *flag, SEQINFER_ADDRESS=server.address)
    assert result.exit_code == 0, result.output
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    assert set(listed) == {"pydoc-chars", "tiny"}
    assert listed["tiny"]["state_bytes_per_session"] == 2 * 16 * 4
    assert listed["tiny"]["max_timesteps"] > 0


def test_models_rejects_an_unknown_format(server: ServerThread) -> None:
    result = _cli("models", "-o", "yaml", SEQINFER_ADDRESS=server.address)
    assert result.exit_code == 2
    assert "yaml" in result.output
