"""Install, start and stop TorchServe as a benchmark peer, by PID.

    python -m benchmarks.peers.torchserve setup    # venv, weights, .mar, client stubs
    python -m benchmarks.peers.torchserve start    # prints the gRPC port and PID
    python -m benchmarks.peers.torchserve stop

Everything lives under this folder (gitignored): ``.venv/`` (TorchServe and
its own torch, kept apart from seqinfer's venv), ``weights/``,
``model-store/``, ``gen/`` (Python stubs of TorchServe's inference.proto) and
``run/`` (config, logs, temp files and the PID file). ``TMPDIR`` points into
``run/tmp`` so that TorchServe's PID file is ours, not the machine-wide one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import free_port, process_tree

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
RUN = HERE / "run"
STORE = HERE / "model-store"
WEIGHTS = HERE / "weights" / "weights.pt"
GEN = HERE / "gen"
MODEL = "bench-gru"
TORCH_PIN = "torch==2.13.0"
PACKAGES = [
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    # The worker imports yaml but the wheel does not declare it.
    "pyyaml",
    # inference.proto imports google/rpc/status.proto.
    "googleapis-common-protos",
    "numpy",
]


def _bin(name: str) -> str:
    return str(VENV / "bin" / name)


def _log(message: str) -> None:
    print(f"[torchserve] {message}", file=sys.stderr, flush=True)


def installed() -> bool:
    return Path(_bin("torchserve")).exists() and Path(_bin("torch-model-archiver")).exists()


def install() -> None:
    """Create the venv: the CPU torch pin first, so pip never resolves a CUDA build."""
    if installed():
        return
    _log(f"creating {VENV} (TorchServe 0.12 and its own torch)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [_bin("python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *PACKAGES], check=True)


def _newer(target: Path, *sources: Path) -> bool:
    return target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


def build_archive() -> Path:
    """Export the bench-gru weights and pack them with the handler into a .mar."""
    from benchmarks.reference import export_state_dict

    if not WEIGHTS.exists():
        export_state_dict(MODEL, WEIGHTS)
    mar = STORE / f"{MODEL}.mar"
    sources = (HERE / "handler.py", HERE / "model-config.yaml", WEIGHTS)
    if _newer(mar, *sources):
        return mar
    STORE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            _bin("torch-model-archiver"),
            "--model-name", MODEL,
            "--version", "1.0",
            "--handler", str(HERE / "handler.py"),
            "--serialized-file", str(WEIGHTS),
            "--config-file", str(HERE / "model-config.yaml"),
            "--export-path", str(STORE),
            "--force",
        ],
        check=True,
    )  # fmt: skip
    return mar


def _jar() -> Path:
    found = list((VENV / "lib").glob("python3*/site-packages/ts/frontend/model-server.jar"))
    if not found:
        raise FileNotFoundError("model-server.jar not found: run setup first")
    return found[0]


def build_stubs() -> None:
    """Compile inference.proto (inside the frontend jar) into gen/ with this venv's protoc."""
    if (GEN / "inference_pb2_grpc.py").exists():
        return
    import google.rpc
    import grpc_tools
    from grpc_tools import protoc

    proto_dir = GEN / "proto"
    proto_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_jar()) as jar:
        (proto_dir / "inference.proto").write_bytes(jar.read("proto/inference.proto"))
    googleapis_root = Path(next(iter(google.rpc.__path__))).parent.parent
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"-I{googleapis_root}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        str(proto_dir / "inference.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on inference.proto")


def setup() -> None:
    install()
    build_archive()
    build_stubs()


@dataclass
class Endpoints:
    grpc_port: int
    management_port: int
    pid: int


def _pid_file() -> Path:
    return RUN / "tmp" / ".model_server.pid"


def _config(http: int, management: int, metrics: int, grpc_inf: int, grpc_mgmt: int) -> str:
    # Addresses are loopback only; gRPC ports must be plain numbers.
    return "\n".join(
        [
            f"inference_address=http://127.0.0.1:{http}",
            f"management_address=http://127.0.0.1:{management}",
            f"metrics_address=http://127.0.0.1:{metrics}",
            "grpc_inference_address=127.0.0.1",
            f"grpc_inference_port={grpc_inf}",
            "grpc_management_address=127.0.0.1",
            f"grpc_management_port={grpc_mgmt}",
            "disable_token_authorization=true",
            "install_py_dep_per_model=false",
            # The system-metrics collector starts a Python process every minute.
            "disable_system_metrics=true",
            f"model_store={STORE}",
            "",
        ]
    )


def _model_status(management: int) -> str:
    url = f"http://127.0.0.1:{management}/models/{MODEL}"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            info = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return ""
    workers = info[0].get("workers", []) if info else []
    return str(workers[0].get("status", "")) if workers else ""


def start(timeout: float = 120.0) -> Endpoints:
    """Start TorchServe with the bench-gru .mar; return once its worker is READY."""
    setup()
    if _pid_file().exists():
        stop()
    (RUN / "tmp").mkdir(parents=True, exist_ok=True)
    (RUN / "logs").mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(5)]
    (RUN / "config.properties").write_text(_config(*ports))
    env = dict(os.environ)
    env.update(
        TMPDIR=str(RUN / "tmp"),
        TEMP=str(RUN / "tmp"),
        LOG_LOCATION=str(RUN / "logs"),
        METRICS_LOCATION=str(RUN / "logs"),
        PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}",
    )
    with (RUN / "logs" / "launcher.log").open("ab") as log:
        subprocess.run(
            [
                _bin("torchserve"), "--start", "--ncs",
                "--model-store", str(STORE),
                "--models", f"{MODEL}={MODEL}.mar",
                "--ts-config", str(RUN / "config.properties"),
                "--log-config", str(HERE / "log4j2.xml"),
                "--disable-token-auth",
            ],
            check=True, env=env, cwd=str(RUN), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not _pid_file().exists():
        if time.monotonic() > deadline:
            raise TimeoutError("TorchServe wrote no PID file")
        time.sleep(0.1)
    pid = int(_pid_file().read_text().split()[0])
    # /ping is healthy before the worker has loaded; the model's status is not.
    while _model_status(ports[1]) != "READY":
        if time.monotonic() > deadline:
            stop()
            raise TimeoutError(f"TorchServe's worker not READY in {timeout} s; see {RUN / 'logs'}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            time.sleep(0.2)
            continue
        raise RuntimeError(f"TorchServe (PID {pid}) exited; see {RUN / 'logs'}")
    return Endpoints(grpc_port=ports[3], management_port=ports[1], pid=pid)


def running_pid() -> int | None:
    if not _pid_file().exists():
        return None
    pid = int(_pid_file().read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop(grace: float = 20.0) -> None:
    """SIGTERM the frontend by its PID, then SIGKILL whatever of its tree is left."""
    pid = running_pid()
    if pid is not None:
        tree = process_tree(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.2)
        for p in tree:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        _pid_file().unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def clean() -> None:
    """Remove what setup and runs built (not the venv)."""
    for path in (RUN, STORE, GEN, WEIGHTS.parent):
        shutil.rmtree(path, ignore_errors=True)
