"""The engine process at saturation: record a front end's batches, then replay them, many in flight.

What one engine process can absorb decides how many front ends it can
feed, and one front end (or a gRPC load generator on 2 cores) cannot
saturate it. So the engine is driven the way K front ends would drive it,
without their gRPC cost:

1. **Record.** An engine process and one front end are started as
   ``serve --frontends 1`` starts them (``engine_process``, ``frontend``,
   settings and socket in the environment), with a recording relay between
   them on the ZeroMQ path: every multipart message the front end sends
   passes through unchanged and is kept. The front end serves a StreamSteps
   load (separate load-generator processes), so what is kept are real
   front-end batches, coalesced per event-loop turn, in the wire format of
   the build under test. Envelopes that open sessions are left out, so that
   every kept batch steps existing sessions when replayed.
2. **Replay.** The front end and the relay stop; a feeder process (DEALER,
   like a front end) sends the kept messages to the same engine over and
   over, byte for byte, keeping ``window`` steps in flight, and counts the
   steps answered. The engine's CPU over the run, and the part of it spent
   computing (the harness's probe around ``GRUEngine.run``), give its CPU
   per item with and without the compute: on a GPU the compute leaves the
   CPU, and what remains is what bounds the front ends one engine can feed.

Only ``ipc.decode`` is used to read messages (to count steps and find the
envelopes that open sessions), so a change of the envelope codec needs no
change here as long as one message stays one ``decode``-able first frame.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from benchmarks.baseline import server_env
from benchmarks.procs import ServerProcess, free_port
from benchmarks.server_metrics import SERVE_CODE
from benchmarks.server_metrics import scrape as scrape_probe
from benchmarks.servers import REPO
from seqinfer.service import ipc
from seqinfer.service.config import Settings
from seqinfer.service.engine_process import READY
from seqinfer.service.frontend import SERVING
from seqinfer.service.supervisor import ENGINE, FRONTEND

# The harness's engine CPU probe, in front of the engine process instead of the CLI.
PROBED_ENGINE = SERVE_CODE.rsplit("from seqinfer.cli.main", 1)[0] + ENGINE + "\n"
# Kept envelopes at most: enough variety, and a bounded payload for the feeder process.
MAX_KEPT = 4000


class Relay:
    """ROUTER for one front end, DEALER to the engine; keeps what the front end sends."""

    def __init__(self, front_path: str, engine_path: str) -> None:
        self._context = zmq.Context()
        self._front = self._context.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        self._front.bind(f"ipc://{front_path}")
        self._engine = self._context.socket(zmq.DEALER)
        self._engine.setsockopt(zmq.LINGER, 0)
        self._engine.connect(f"ipc://{engine_path}")
        self.kept: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._engine, zmq.POLLIN)
        identity = b""
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                if sock is self._front:
                    identity, *frames = self._front.recv_multipart()
                    if len(self.kept) < MAX_KEPT:
                        self.kept.append(frames)
                    self._engine.send_multipart(frames)
                else:
                    self._front.send_multipart([identity, *self._engine.recv_multipart()])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._front.close(0)
        self._engine.close(0)
        self._context.term()


def replayable(kept: list[list[bytes]]) -> tuple[list[list[bytes]], list[int]]:
    """The kept step envelopes that open no session, and the steps each carries."""
    chosen, sizes = [], []
    for frames in kept:
        message = ipc.decode(frames[0])
        if message[0] != "steps" or any(command.start for _, command in message[1]):
            continue
        chosen.append(frames)
        sizes.append(len(message[1]))
    return chosen, sizes


def _feed(
    socket_path: str,
    messages: list[list[bytes]],
    sizes: list[int],
    window: int,
    warmup: float,
    duration: float,
    out: Any,
) -> None:
    """Feeder process: replay ``messages`` round and round, ``window`` steps in flight."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{socket_path}")
    in_flight = sent = answered = counted = errors = 0
    cpu0 = time.process_time()
    started = time.perf_counter()
    measure_from, measure_to = started + warmup, started + warmup + duration
    n = 0
    while True:
        now = time.perf_counter()
        if now < measure_to:
            while in_flight < window:
                sock.send_multipart(messages[n % len(messages)], copy=False)
                in_flight += sizes[n % len(messages)]
                sent += sizes[n % len(messages)]
                n += 1
        elif in_flight == 0:
            break
        if not sock.poll(10_000):
            out.put({"fatal": f"no reply from the engine in 10 s ({in_flight} steps in flight)"})
            return
        _, replies = ipc.decode(sock.recv_multipart()[0])
        in_flight -= len(replies)
        answered += len(replies)
        bad = sum(isinstance(reply, BaseException) for reply in replies)
        errors += bad
        if measure_from <= time.perf_counter() < measure_to:
            counted += len(replies) - bad
    sock.close(0)
    context.term()
    cpu = time.process_time() - cpu0
    out.put({"sent": sent, "answered": answered, "counted": counted, "errors": errors, "cpu": cpu})


@dataclass
class Saturation:
    """The engine process under the feeder; per-item figures in microseconds."""

    recorded_messages: int
    replayed_messages: int
    mean_batch: float
    window: int
    items_per_s: float
    items: int
    errors: int
    engine_cpu_s: float
    compute_cpu_s: float
    engine_us_per_item: float
    engine_us_per_item_outside_compute: float
    feeder_cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wait_line(server: ServerProcess, prefix: str, timeout: float) -> str:
    found: list[str] = []

    def probe() -> bool:
        # The log is created by the process's output pump thread, which may
        # not have opened it yet on the first poll.
        if not server.log_path.exists():
            return False
        for line in server.log_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                found.append(line)
                return True
        return False

    server.wait_ready(probe, timeout)
    return found[0]


def saturate(
    log_dir: Path,
    sessions: int,
    record_seconds: float,
    warmup: float,
    duration: float,
    window: int,
    client_procs: int = 1,
) -> Saturation:
    """Record front-end batches under a StreamSteps load of ``sessions``, then replay them."""
    from benchmarks.loadgen.runner import run_load
    from benchmarks.loadgen.spec import LoadSpec

    run_dir = Path(tempfile.mkdtemp(prefix="seqinfer-feeder-"))
    os.chmod(run_dir, 0o700)
    engine_path, front_path = str(run_dir / "engine.sock"), str(run_dir / "front.sock")
    metrics_port = free_port()
    settings = Settings(
        host="127.0.0.1", port=0, device="cpu", log_level="WARNING",
        metrics_host="127.0.0.1", metrics_port=metrics_port,
    )  # fmt: skip
    env = {ipc.SETTINGS_ENV: settings.model_dump_json()}
    engine_env = server_env(REPO, {**env, ipc.ENGINE_SOCKET_ENV: engine_path})
    engine = ServerProcess(
        "feeder-engine", [sys.executable, "-c", PROBED_ENGINE],
        log_dir / "feeder-engine.log", env=engine_env, cwd=str(REPO),
    )  # fmt: skip
    relay = Relay(front_path, engine_path)
    front_settings = settings.model_copy(update={"metrics_port": 0})
    front = ServerProcess(
        "feeder-frontend", [sys.executable, "-c", FRONTEND, "0"], log_dir / "feeder-frontend.log",
        env=server_env(REPO, {ipc.SETTINGS_ENV: front_settings.model_dump_json(),
                              ipc.ENGINE_SOCKET_ENV: front_path}),
        cwd=str(REPO),
    )  # fmt: skip
    try:
        engine.start()
        _wait_line(engine, READY, 120)
        relay.start()
        front.start()
        port = int(_wait_line(front, SERVING, 60).split()[4])
        run_load(
            LoadSpec(
                target=f"127.0.0.1:{port}", transport="stream", sessions=sessions,
                duration=record_seconds, warmup=warmup, close_sessions=False,
                client_procs=min(client_procs, sessions),
                session_prefix=f"feeder-{time.monotonic_ns()}",
            ),
            show_progress=False,
        )  # fmt: skip
        front.stop()
        relay.stop()
        messages, sizes = replayable(relay.kept)
        if not messages:
            raise RuntimeError("the front end sent no replayable step batches")
        return _replay(engine, metrics_port, engine_path, relay, messages, sizes, window,
                       warmup, duration)  # fmt: skip
    finally:
        front.stop()
        engine.stop()
        for path in (engine_path, front_path):
            Path(path).unlink(missing_ok=True)
        run_dir.rmdir()


def _replay(
    engine: ServerProcess,
    metrics_port: int,
    engine_path: str,
    relay: Relay,
    messages: list[list[bytes]],
    sizes: list[int],
    window: int,
    warmup: float,
    duration: float,
) -> Saturation:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    feeder = ctx.Process(
        target=_feed, args=(engine_path, messages, sizes, window, warmup, duration, out)
    )
    probe_before = scrape_probe(metrics_port).engine_cpu_s or 0.0
    cpu_before = engine.cpu()
    feeder.start()
    result = out.get(timeout=warmup + duration + 120)
    feeder.join(30)
    engine_cpu = engine.cpu() - cpu_before
    compute = (scrape_probe(metrics_port).engine_cpu_s or 0.0) - probe_before
    if "fatal" in result:
        raise RuntimeError(result["fatal"])
    items = result["answered"] - result["errors"]
    return Saturation(
        recorded_messages=len(relay.kept),
        replayed_messages=len(messages),
        mean_batch=sum(sizes) / len(sizes),
        window=window,
        items_per_s=result["counted"] / duration,
        items=items,
        errors=result["errors"],
        engine_cpu_s=engine_cpu,
        compute_cpu_s=compute,
        engine_us_per_item=engine_cpu / items * 1e6 if items else 0.0,
        engine_us_per_item_outside_compute=(engine_cpu - compute) / items * 1e6 if items else 0.0,
        feeder_cpu_s=result["cpu"],
    )
