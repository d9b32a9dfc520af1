"""The client CLI on the real server: in-process through typer, and the installed entry point.

Sessions are opened, stepped (JSON, .npy, random inputs), forked and closed;
refusals and bad arguments exit non-zero with the reason on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from seqinfer.cli import client_cmds
from tests.integration.client_real_server.served import BENCH, frames
from tests.support import reference_run


@pytest.fixture
def cli(server: Any) -> Any:
    app = typer.Typer()
    client_cmds.register(app)
    runner = CliRunner(env={"SEQINFER_ADDRESS": server.address})

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return run


def test_cli_session_lifecycle_and_steps(cli: Any, tmp_path: Path) -> None:
    result = cli("models", "--output", "json")
    assert result.exit_code == 0, result.output
    assert "bench-gru" in {m["name"] for m in json.loads(result.stdout)}

    opened = cli("session", "open", "bench-gru", "--id", "cli-demo", "--ttl", "600")
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["session_id"] == "cli-demo"

    x = frames(2)
    stepped = cli("step", "cli-demo", "--json", json.dumps(x.tolist()), "--all")
    assert stepped.exit_code == 0, stepped.output
    body = json.loads(stepped.stdout)
    assert body["step"] == 2
    np.testing.assert_allclose(body["outputs"], reference_run(BENCH, x)[0], atol=1e-5, rtol=0)

    path = tmp_path / "x.npy"
    np.save(path, frames(3))
    via_npy = cli("step", "cli-demo", "--npy", str(path), "--return-state", "--expected-step", "2")
    assert via_npy.exit_code == 0, via_npy.output
    body = json.loads(via_npy.stdout)
    assert body["step"] == 5 and np.shape(body["state"]) == (2, 256)
    assert np.shape(body["outputs"]) == (64,)

    one_row = cli("step", "cli-demo", "--json", json.dumps(frames(1)[0].tolist()))
    assert json.loads(one_row.stdout)["step"] == 6
    assert json.loads(cli("step", "cli-demo", "--random", "2").stdout)["step"] == 8

    got = cli("session", "get", "cli-demo")
    assert json.loads(got.stdout)["step"] == 8

    forked = cli("session", "fork", "cli-demo", "--new-id", "cli-fork")
    assert json.loads(forked.stdout)["step"] == 8

    closed = cli("session", "close", "cli-demo")
    assert json.loads(closed.stdout) == {"session_id": "cli-demo", "final_step": 8}
    assert cli("session", "close", "cli-fork").exit_code == 0

    started = cli("step", "cli-start", "--start", "--model", "bench-gru", "--random", "1", "--end")
    body = json.loads(started.stdout)
    assert body["created"] and body["closed"] and body["step"] == 1


def test_cli_errors(cli: Any) -> None:
    missing = cli("session", "get", "nope")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: SESSION_NOT_FOUND: ")
    assert cli("session", "open", "bench-gru", "--id", "cli-err").exit_code == 0
    gap = cli("step", "cli-err", "--random", "1", "--expected-step", "3")
    assert gap.exit_code == 1 and gap.stderr.startswith("error: STEP_GAP: ")
    bad_json = cli("step", "cli-err", "--json", "[[1, 2")
    assert bad_json.exit_code == 2 and bad_json.stderr.startswith("error: INVALID_INPUT: ")
    wrong_width = cli("step", "cli-err", "--json", "[[1, 2, 3]]")
    assert wrong_width.exit_code == 1 and wrong_width.stderr.startswith("error: INVALID_INPUT: ")
    none = cli("step", "cli-err")
    assert none.exit_code == 2 and "exactly one of" in none.stderr
    assert cli("session", "close", "cli-err").exit_code == 0


def test_console_script_end_to_end(server: Any) -> None:
    """The installed `seqinfer` entry point, address from the environment."""
    exe = shutil.which("seqinfer", path=os.path.dirname(sys.executable))
    assert exe is not None
    env = {**os.environ, "SEQINFER_ADDRESS": server.address}
    done = subprocess.run(
        [exe, "step", "cli-e2e", "--start", "--model", "bench-gru", "--random", "2", "--end"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["created"] and body["closed"] and body["step"] == 2
    gone = subprocess.run(
        [exe, "session", "get", "cli-e2e"], env=env, capture_output=True, text=True, timeout=120
    )
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: SESSION_NOT_FOUND: ")
