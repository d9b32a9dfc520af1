"""The container's exact command and config file, run outside Docker.

The command is read from deploy/Dockerfile (ENTRYPOINT + CMD, the same as the
compose file's `command`), the config file is the one the Dockerfile copies
to /etc/seqinfer/seqinfer.yaml, and the healthcheck is the Dockerfile's
HEALTHCHECK (the same as compose's). Only what the container's network gives
differs: the bind addresses and ports come from SEQINFER_* env (which the
settings loader ranks above the YAML file) so that the test binds loopback on
free ports. Then: the healthcheck passes, /metrics answers, and SIGTERM drains
a step held in the engine and exits 0, as `docker stop` would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.gated_serve import GatedServer
from tests.serve_process import ServeProcess, free_port
from tests.support import error_reason, to_tensor, wait_until
from tests.unit.test_deploy import (
    CONTAINER_CONFIG_PATH,
    DEPLOY,
    dockerfile_exec_form,
    dockerfile_healthcheck,
    dockerfile_instructions,
)

DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent


def host_path_of(container_path: str) -> Path:
    """The repository file the Dockerfile COPYs to ``container_path``."""
    for op, rest in dockerfile_instructions(DOCKERFILE):
        if op == "COPY":
            source, _, target = rest.rpartition(" ")
            if target == container_path:
                return DEPLOY.parent / source
    raise AssertionError(f"the Dockerfile copies nothing to {container_path}")


def executable(name: str) -> str:
    """The venv's console script (the image installs the same entry point on PATH)."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found beside {sys.executable} or on PATH"
    return found


def container_command(dockerfile: Path = DOCKERFILE) -> list[str]:
    argv = dockerfile_exec_form(dockerfile, "ENTRYPOINT") + dockerfile_exec_form(dockerfile, "CMD")
    config = host_path_of(CONTAINER_CONFIG_PATH)
    return [
        executable(argv[0]),
        *(str(config) if a == CONTAINER_CONFIG_PATH else a for a in argv[1:]),
    ]


def health_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command; it finds the server through SEQINFER_PORT."""
    argv = dockerfile_healthcheck(DOCKERFILE)
    return [executable(argv[0]), *argv[1:]]


def health_env(port: int) -> dict[str, str]:
    """The healthcheck's environment in the container: the server's own env."""
    env = {k: v for k, v in os.environ.items() if k != "SEQINFER_HEALTH_ADDRESS"}
    return {**env, "SEQINFER_PORT": str(port)}


def container_env(port: int, metrics_port: int) -> dict[str, str]:
    """The server's env (over this process's): what the container's network gives, on
    loopback and free ports."""
    return {
        "SEQINFER_HOST": "127.0.0.1",
        "SEQINFER_PORT": str(port),
        "SEQINFER_METRICS_HOST": "127.0.0.1",
        "SEQINFER_METRICS_PORT": str(metrics_port),
        # The image has one torch thread pool to itself; here, other tests run too.
        "SEQINFER_TORCH_THREADS": "1",
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    port, metrics_port = free_port(), free_port()
    program, *args = container_command()
    with ServeProcess(
        args,
        program=[program],
        env=container_env(port, metrics_port),
        cwd=tmp_path_factory.mktemp("cwd"),  # like the image's WORKDIR: not the repo
        metrics_port=metrics_port,
    ) as server:
        assert server.port() == port
        yield server


def test_command_is_the_compose_command() -> None:
    import yaml

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["seqinfer"]["command"] == dockerfile_exec_form(DOCKERFILE, "CMD")
    assert container_command()[1:4] == ["serve", "--config", str(DEPLOY / "seqinfer.yaml")]


def test_healthcheck_passes(served: ServeProcess) -> None:
    env = health_env(served.port())
    result = subprocess.run(health_command(), env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # The service-specific name is reported too (what a gRPC-aware balancer asks).
    by_name = subprocess.run(
        [*health_command(), "--service", "seqinfer.v1.Seqinfer"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert by_name.returncode == 0, by_name.stderr


def test_metrics_endpoint_answers(served: ServeProcess) -> None:
    with urllib.request.urlopen(served.metrics_url(), timeout=5) as reply:
        text = reply.read().decode()
    assert "seqinfer_build_info{" in text
    assert 'seqinfer_state_slab_capacity_slots{model="bench-gru:1"}' in text


def _healthcheck(port: int) -> int:
    """Docker's view: the exit status of the image's HEALTHCHECK command."""
    command = [*health_command(), "--timeout", "5"]
    return subprocess.run(command, env=health_env(port), capture_output=True, timeout=30).returncode


def test_sigterm_drains_held_work_and_exits_zero(tmp_path: Path) -> None:
    """`docker stop` while a step is in the engine: the healthcheck fails, new work is
    refused with DRAINING, the held step is answered, the process exits 0.

    The server is its own, so this depends on no other test's order. It runs
    the container's arguments and config file through ``tests.gated_serve``,
    which wraps the entry point only to hold batches until the test lets them go.
    """
    port = free_port()
    args = container_command()[1:]
    with GatedServer(args, env=container_env(port, free_port()), cwd=tmp_path) as server:
        with grpc.insecure_channel(server.address()) as channel:
            api = pb_grpc.SeqinferStub(channel)
            assert _healthcheck(port) == 0
            api.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="held"))
            x = to_tensor(np.ones((2, 64), np.float32))
            held = api.Step.future(pb.StepRequest(session_id="held", inputs=x), timeout=120)
            server.wait_held(1)
            server.send_signal(signal.SIGTERM)
            wait_until(lambda: _healthcheck(port) == 1, 60, "the healthcheck to fail")
            with pytest.raises(grpc.RpcError) as refused:
                api.Step(pb.StepRequest(session_id="held", inputs=x), timeout=30)
            assert error_reason(refused.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "DRAINING")
            server.open()
            assert held.result(timeout=120).step == 2
        assert server.wait(60) == 0, server.log()[-3000:]
    # Stopped: the healthcheck still fails, as Docker would see.
    assert _healthcheck(port) == 1


def test_cuda_image_command_parses_and_fails_clearly_without_a_gpu() -> None:
    """Dockerfile.cuda's CMD (`--device cuda`) on a machine without CUDA: a clear error,
    exit 1, not a silent CPU fallback. Skipped where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: this checks the no-GPU failure")
    program, *args = container_command(DEPLOY / "Dockerfile.cuda")
    env = {"SEQINFER_HOST": "127.0.0.1", "SEQINFER_PORT": "0", "SEQINFER_METRICS_PORT": "0"}
    with ServeProcess(args, program=[program], env=env) as server:
        assert server.wait(120) == 1, "\n".join(server.lines) + server.log()
        assert "CUDA is not available" in server.log()
