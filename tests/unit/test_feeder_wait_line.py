"""The feeder's log-line wait must tolerate a log the output pump has not created yet.

A ``--scale quick`` run lost its feeder figures to FileNotFoundError: the
probe read the engine's log before ServerProcess's pump thread had opened it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.frontends.feeder import _wait_line
from benchmarks.procs import ServerProcess


@pytest.fixture
def idle_server(tmp_path: Path) -> Iterator[ServerProcess]:
    # A live process whose output nobody pumps, so its log file never appears
    # unless the test writes it.
    server = ServerProcess("idle", [sys.executable], tmp_path / "idle.log")
    server.proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield server
    finally:
        assert server.proc.stdin is not None
        server.proc.stdin.close()
        server.proc.wait(30)


def test_missing_log_means_not_ready_yet(idle_server: ServerProcess) -> None:
    assert not idle_server.log_path.exists()
    with pytest.raises(TimeoutError):
        _wait_line(idle_server, "READY", 0)


def test_line_found_once_log_exists(idle_server: ServerProcess) -> None:
    idle_server.log_path.write_text("noise\nREADY at 1234\n")
    assert _wait_line(idle_server, "READY", 0) == "READY at 1234"
