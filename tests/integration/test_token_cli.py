"""`seqinfer token new` makes a line the server accepts; a bad token file stops `serve`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from seqinfer.service.tenants import TokenTable
from tests.serve_process import CLI, child_pythonpath, serve_args


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": child_pythonpath(), **env}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=environment
    )


def test_a_new_token_and_its_line_admit_that_tenant(tmp_path: Path):
    done = _run(["token", "new", "--tenant", "acme", "--steps-per-second", "50"])
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    token, entry = lines["token"].strip(), lines["line"].strip()
    assert token not in entry
    (tmp_path / "tokens").write_text(entry + "\n")
    tenant = TokenTable.load(tmp_path / "tokens").tenant_of(token)
    assert (tenant.name, tenant.steps_per_second) == ("acme", 50.0)


def test_serve_stops_with_exit_2_and_the_line_named_on_a_bad_token_file(tmp_path: Path):
    (tmp_path / "tokens").write_text("# ok\nnot-a-hash acme\n")
    done = _run(serve_args(), SEQINFER_AUTH_TOKEN_FILE=str(tmp_path / "tokens"))
    assert done.returncode == 2
    assert "line 2" in done.stderr and "sha256" in done.stderr
