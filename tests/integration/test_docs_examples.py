"""The command transcripts in docs/models.md are what the commands print.

Each example is run exactly as the page writes it (the arguments are read
from the page), against an in-process server of the built-in models, and
its output compared with the page's transcript. The demo's timing and the
server's address vary; its text and step count must not.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from seqinfer.cli.main import app
from seqinfer.service.models.builtin import builtin_models
from tests.support import ServerThread, running_server

DOC = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def _blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_server(builtin_models()) as server:
        yield server


def _run(server: ServerThread, command: str) -> Result:
    argv = shlex.split(command)
    assert argv[0] == "seqinfer", command
    runner = CliRunner(env={"SEQINFER_ADDRESS": server.address})
    return runner.invoke(app, argv[1:])


def test_models_table_is_what_seqinfer_models_prints(server: ServerThread) -> None:
    (console,) = [body for info, body in _blocks(_section("Built-in models")) if info == "console"]
    command, *table = console.splitlines()
    result = _run(server, command.removeprefix("$ "))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == table


def test_demo_transcript_is_what_the_command_as_written_prints(server: ServerThread) -> None:
    section = _section("The demo")
    commands, transcript = (body for _, body in _blocks(section)[:2])
    (demo,) = [line.split("#")[0] for line in commands.splitlines() if "seqinfer demo" in line]
    result = _run(server, demo)
    assert result.exit_code == 0, result.output
    text, summary = transcript.rstrip("\n").rsplit("\n\n", 1)
    assert result.stdout == text
    steps = re.match(r"\[(\d+) steps on (\S+) at ", summary)
    assert steps is not None, summary
    got = re.search(r"\[(\d+) steps on (\S+) at ", result.stderr)
    assert got is not None and got.groups() == steps.groups(), result.stderr
