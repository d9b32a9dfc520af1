"""The servers under test, each started as its own process on loopback.

``echo``        the transport limit (benchmarks/baselines/echo_server.py)
``handwritten`` grpc.aio + nn.GRU, no batching (benchmarks/baselines/handwritten_server.py)
``seqinfer``    ``seqinfer serve`` on its built-in models
``baseline``    the same, from a checkout of an earlier commit (``--baseline-ref``)
``torchserve``  TorchServe 0.12 with sequence batching (benchmarks/peers/torchserve/)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.baseline import server_env
from benchmarks.procs import ServerProcess, cpu_seconds, free_port, rss_bytes
from benchmarks.server_metrics import SERVE_CODE
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
SERVER_NAMES = ("echo", "handwritten", "seqinfer", "baseline", "torchserve")


@dataclass
class Target:
    """A running server: where to reach it and how to read its process's usage."""

    name: str
    address: str
    pid: int
    # TorchServe is a JVM plus Python workers: its usage is the whole process tree.
    tree: bool = False
    process: ServerProcess | None = None
    # seqinfer's Prometheus endpoint on loopback (None: the server has none).
    metrics_port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def rss(self) -> int:
        return rss_bytes(self.pid, tree=self.tree)

    def cpu(self) -> float:
        return cpu_seconds(self.pid, tree=self.tree)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        elif self.name == "torchserve":
            from benchmarks.peers.torchserve import peer

            peer.stop()


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_echo(log_dir: Path, output_size: int = 64) -> Target:
    argv = _python_module(
        "benchmarks.baselines.echo_server", "--port", "0", "--output-size", str(output_size)
    )
    server = ServerProcess("echo", argv, log_dir / "echo.log", cwd=str(REPO))
    server.start()
    port = server.wait_listening(60)
    return Target("echo", f"127.0.0.1:{port}", server.pid, process=server)


def start_handwritten(log_dir: Path, threads: int = 1) -> Target:
    argv = _python_module(
        "benchmarks.baselines.handwritten_server", "--port", "0", "--threads", str(threads)
    )
    server = ServerProcess("handwritten", argv, log_dir / "handwritten.log", cwd=str(REPO))
    server.start()
    port = server.wait_listening(120)
    return Target("handwritten", f"127.0.0.1:{port}", server.pid, process=server)


def _seqinfer_ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
            reply = pb_grpc.SeqinferStub(channel).ListModels(pb.ListModelsRequest(), timeout=2)
        except (grpc.FutureTimeoutError, grpc.RpcError):
            return False
    return any(m.name == "bench-gru" for m in reply.models)


def start_seqinfer(
    log_dir: Path,
    extra_args: tuple[str, ...] = (),
    name: str = "seqinfer",
    env: dict[str, str] | None = None,
    root: Path = REPO,
) -> Target:
    """`seqinfer serve` of the tree at `root`, its metrics endpoint on a free loopback port.

    It runs with the engine CPU probe of benchmarks/server_metrics.py, whose
    endpoint is read before and after each cell to split the server's CPU
    into engine and front-end time; turning
    metrics on costs no difference beyond the noise here
    (benchmarks/metrics_overhead.py). `root`'s packages come first on
    PYTHONPATH, so a `root` other than this repository (``--baseline-ref``)
    serves its own code with this interpreter. `extra_args` go to
    `seqinfer serve`; `env` is added to this process's environment (for
    what-if runs, e.g. OMP_NUM_THREADS=1).
    """
    port = free_port()
    metrics_port = free_port()
    argv = [
        sys.executable,
        "-c",
        SERVE_CODE,
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-host", "127.0.0.1",
        "--metrics-port", str(metrics_port),
        "--device", "cpu",
        "--log-level", "WARNING",
        *extra_args,
    ]  # fmt: skip
    server = ServerProcess(
        name, argv, log_dir / f"{name}.log", env=server_env(root, env), cwd=str(root)
    )
    server.start()
    address = f"127.0.0.1:{port}"
    server.wait_ready(lambda: _seqinfer_ready(address), timeout=120)
    return Target(name, address, server.pid, process=server, metrics_port=metrics_port)


def start_torchserve() -> Target:
    from benchmarks.peers.torchserve import peer

    started = time.monotonic()
    ends = peer.start()
    return Target(
        "torchserve",
        f"127.0.0.1:{ends.grpc_port}",
        ends.pid,
        tree=True,
        extra={"startup_s": f"{time.monotonic() - started:.1f}"},
    )
