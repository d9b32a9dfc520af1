"""deploy/: compose files, Dockerfiles, Prometheus and Grafana configs agree and validate.

External validators run when installed (Debian packages `docker-compose` and
`prometheus`, which `make test` installs through scripts/test-services.sh) and
skip with the reason otherwise; the structural checks always run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_CUDA = DEPLOY / "docker-compose.cuda.yml"
COMPOSE_HOSTNET = DEPLOY / "docker-compose.hostnet.yml"
COMPOSE_REDIS = DEPLOY / "docker-compose.redis.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
CONTAINER_CONFIG_PATH = "/etc/seqinfer/seqinfer.yaml"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def dockerfile_exec_form(path: Path, op: str) -> list[str]:
    [args] = [rest for o, rest in dockerfile_instructions(path) if o == op]
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def dockerfile_healthcheck(path: Path) -> list[str]:
    [args] = [rest for o, rest in dockerfile_instructions(path) if o == "HEALTHCHECK"]
    _, _, exec_form = args.partition(" CMD ")
    value = json.loads(exec_form)
    return [str(v) for v in value]


# -------------------------------------------------------------- compose --


@pytest.mark.parametrize(
    "files",
    [[COMPOSE], [COMPOSE, COMPOSE_CUDA], [COMPOSE, COMPOSE_HOSTNET], [COMPOSE, COMPOSE_REDIS]],
    ids=["base", "cuda", "hostnet", "redis"],
)
def test_compose_files_validate(files: list[Path]) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    args = [tool]
    for f in files:
        args += ["-f", str(f)]
    result = subprocess.run(
        [*args, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_compose_services_and_wiring() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {"seqinfer", "prometheus", "grafana"}
    seqinfer = services["seqinfer"]
    assert seqinfer["build"]["dockerfile"] == "deploy/Dockerfile"
    assert seqinfer["build"]["context"] == ".."
    assert "BASE_IMAGE" in seqinfer["build"]["args"]
    # The compose healthcheck is the image's: the gRPC health service via `seqinfer health`.
    assert seqinfer["healthcheck"]["test"] == [
        "CMD",
        *dockerfile_healthcheck(DEPLOY / "Dockerfile"),
    ]
    assert seqinfer["command"] == dockerfile_exec_form(DEPLOY / "Dockerfile", "CMD")
    # Prometheus gets the config this repo validates; Grafana the provisioning and dashboards.
    prom_mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_mounts
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dash_dir = mounts["./grafana/dashboards"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (GRAFANA / "dashboards" / home.removeprefix(dash_dir + "/")).is_file()
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "seqinfer.yml")
    assert provider["providers"][0]["options"]["path"] == dash_dir
    # Drain (30 s in seqinfer.yaml) must finish before Docker's SIGKILL.
    grace = int(str(seqinfer["stop_grace_period"]).removesuffix("s"))
    assert grace > load_yaml(DEPLOY / "seqinfer.yaml")["shutdown_grace_seconds"]


def test_cuda_override_reserves_a_gpu_and_uses_the_cuda_image() -> None:
    cuda = load_yaml(COMPOSE_CUDA)["services"]["seqinfer"]
    assert cuda["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    [device] = cuda["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert cuda["command"] == dockerfile_exec_form(DEPLOY / "Dockerfile.cuda", "CMD")
    assert cuda["command"][-2:] == ["--device", "cuda"]


def test_redis_override_keeps_sessions_in_a_durable_redis() -> None:
    services = load_yaml(COMPOSE_REDIS)["services"]
    redis = services["redis"]
    command = redis["command"]
    # Write-through's promise holds for what Redis keeps: an fsync'd append-only file.
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "redis-data:/data" in redis["volumes"]
    assert "ports" not in redis, "Redis is reached inside the compose network only"
    seqinfer = services["seqinfer"]
    env = seqinfer["environment"]
    assert env["SEQINFER_STATE_STORE"] == "redis"
    assert env["SEQINFER_REDIS_URL"] == "redis://redis:6379/0"
    assert "write-through" in env["SEQINFER_DURABILITY"]
    # The server refuses to start without its Redis: wait until Redis answers.
    assert seqinfer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_hostnet_override_is_loopback_only() -> None:
    svc = load_yaml(COMPOSE_HOSTNET)["services"]["seqinfer"]
    assert svc["network_mode"] == "host"
    env = svc["environment"]
    assert env["SEQINFER_HOST"] == "127.0.0.1"
    assert env["SEQINFER_METRICS_HOST"] == "127.0.0.1"


# ----------------------------------------------------------- dockerfiles --


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_shape(name: str) -> None:
    path = DEPLOY / name
    ops = dockerfile_instructions(path)
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1] if "=" in rest else ""
        for o, rest in ops
        if o == "ARG"
    }
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert ops[1] == ("FROM", "${BASE_IMAGE}")
    # The same torch pin as the Makefile's (the CPU wheel this repo is tested with).
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"^TORCH_PIN \?= torch==(\S+)", makefile, re.M)
    assert pin and args["TORCH_VERSION"] == pin.group(1)
    assert dockerfile_exec_form(path, "ENTRYPOINT") == ["seqinfer"]
    cmd = dockerfile_exec_form(path, "CMD")
    assert cmd[:3] == ["serve", "--config", CONTAINER_CONFIG_PATH]
    copies = [rest for o, rest in ops if o == "COPY"]
    assert f"deploy/seqinfer.yaml {CONTAINER_CONFIG_PATH}" in copies
    assert dockerfile_healthcheck(path)[:2] == ["seqinfer", "health"]
    users = [rest for o, rest in ops if o == "USER"]
    assert users and users[-1] != "root"


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    ops = dockerfile_instructions(DEPLOY / "Dockerfile")
    args = dict(rest.split("=", 1) for o, rest in ops if o == "ARG" and "=" in rest)
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_dockerignore_keeps_the_venv_out_and_the_sources_in() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # allow-list: .venv and anything new stay out
    for needed in ("pyproject.toml", "README.md", "proto/", "service/", "client/", "deploy/"):
        assert f"!{needed}" in lines


def test_container_config_loads_with_the_real_settings_loader() -> None:
    from seqinfer.service.config import load_settings

    settings = load_settings(DEPLOY / "seqinfer.yaml")
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert settings.port == 50051 and settings.metrics_port == 9464


# ------------------------------------------------------------ prometheus --


def test_promtool_check_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_compose_service_on_its_metrics_port() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "seqinfer"]
    [target] = job["static_configs"][0]["targets"]
    metrics_port = load_yaml(DEPLOY / "seqinfer.yaml")["metrics_port"]
    assert target == f"seqinfer:{metrics_port}"
    grafana_ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    [ds] = grafana_ds["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    # Grafana sizes $__rate_interval from this; it must match the scrape interval.
    assert ds["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


# ------------------------------------------------------------ healthcheck --


def test_health_command_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from seqinfer.cli.main import app\n"
        "try:\n"
        "    app(['health', '--address', '127.0.0.1:1', '--timeout', '0.5', '-q'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["1", "False"], result.stdout + result.stderr


def test_healthcheck_module_reports_unreachable_as_failure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seqinfer.service.healthcheck", "127.0.0.1:1", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_health_default_address_follows_the_servers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from seqinfer.service.healthcheck import default_address

    monkeypatch.delenv("SEQINFER_HEALTH_ADDRESS", raising=False)
    monkeypatch.delenv("SEQINFER_PORT", raising=False)
    assert default_address() == "127.0.0.1:50051"
    monkeypatch.setenv("SEQINFER_PORT", "6000")
    assert default_address() == "127.0.0.1:6000"
    monkeypatch.setenv("SEQINFER_HEALTH_ADDRESS", "10.1.2.3:7000")
    assert default_address() == "10.1.2.3:7000"
