"""``seqinfer serve --frontends K``: one engine process, K front-end processes, one port.

One Python process answers at most some thousands of gRPC messages per
second per core; the engine can step far more. So the gRPC side runs as K
processes (``frontend``) feeding the one engine process per device
(``engine_process``), which alone owns sessions and slabs, over ZeroMQ
(``ipc``). This process starts and watches them. It creates no gRPC object
and no torch state: the children are fresh interpreters (spawned, not
forked), so nothing of gRPC's or torch's threads is ever copied across a
fork.

- Start: a private directory (mode 0700) for the engine's socket; the engine
  first, until it prints that it is ready; then the front ends, all on one
  public port (chosen here when the setting is 0, so that they agree), each
  announced with its own port and pid. Then ``seqinfer: serving on
  HOST:PORT``, the line the single-process server prints, and one listing
  the front ends' own ports.
- A front end that dies is started again, under the same index.
- The engine dying ends everything, with exit 1 and a line saying so.
- SIGHUP is forwarded to every front end, which re-reads its TLS files and
  the token file (``security``); with a token file, also to the engine,
  which re-reads it for the tenants' quotas and model lists.
- SIGTERM or SIGINT: every front end is stopped first (each turns health
  NOT_SERVING, refuses new work and lets its calls finish), then the engine
  drains; exit 0 when all of them exited 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from seqinfer.service import ipc
from seqinfer.service.config import Settings

log = logging.getLogger(__name__)
ENGINE = "from seqinfer.service.engine_process import main; main()"
FRONTEND = "from seqinfer.service.frontend import main; main()"


def _free_shared_port(host: str) -> tuple[socket.socket, int]:
    """A free port, held (unlistened, SO_REUSEPORT) until the front ends have bound it."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((host, 0))
    return probe, probe.getsockname()[1]


class Supervisor:
    def __init__(self, settings: Settings, frontends: int) -> None:
        self.settings = settings
        self.frontends = frontends
        self._dir = Path(tempfile.mkdtemp(prefix="seqinfer-"))
        os.chmod(self._dir, 0o700)
        self._socket_path = str(self._dir / "engine.sock")
        self._engine: asyncio.subprocess.Process | None = None
        # Set once the engine said it is ready (its SIGHUP handler is in place by then:
        # an earlier SIGHUP would end it).
        self._engine_ready = False
        self._fronts: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    def _env(self, settings: Settings) -> dict[str, str]:
        return {
            **os.environ,
            ipc.SETTINGS_ENV: settings.model_dump_json(),
            ipc.ENGINE_SOCKET_ENV: self._socket_path,
        }

    async def _spawn(self, code: str, settings: Settings, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *args, env=self._env(settings),
            stdout=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
        )  # fmt: skip

    @staticmethod
    async def _first_line(process: asyncio.subprocess.Process, prefix: str, what: str) -> str:
        assert process.stdout is not None
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"{what} exited ({await process.wait()}) before it was ready")
            if line.startswith(prefix):
                asyncio.get_running_loop().create_task(Supervisor._echo(process))
                return line.strip()
            sys.stdout.write(line)

    @staticmethod
    async def _echo(process: asyncio.subprocess.Process) -> None:
        # Keep reading: a child whose stdout pipe fills up would block on its next print.
        assert process.stdout is not None
        while line := await process.stdout.readline():
            sys.stdout.write(line.decode())
            sys.stdout.flush()

    async def _start_frontend(self, index: int, settings: Settings) -> int:
        # Front ends count their calls only for an engine that exports them.
        counted = ("metrics",) if self.settings.metrics_port else ()
        process = await self._spawn(FRONTEND, settings, str(index), *counted)
        line = await self._first_line(process, "seqinfer-frontend: serving", f"front end {index}")
        self._fronts[index] = process
        own_port = int(line.rsplit(" ", 1)[1])
        print(f"seqinfer: front end {index} on port {own_port} (pid {process.pid})", flush=True)
        return own_port

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_sighup)
        self._engine = await self._spawn(ENGINE, self.settings)
        await self._first_line(self._engine, "seqinfer-engine: ready", "the engine")
        self._engine_ready = True
        print(f"seqinfer: engine ready (pid {self._engine.pid})", flush=True)
        probe, port = None, self.settings.port
        if port == 0:
            probe, port = _free_shared_port(self.settings.host)
        # Front ends export no metrics of their own (the engine process does).
        front_settings = self.settings.model_copy(update={"port": port, "metrics_port": 0})
        try:
            own = [await self._start_frontend(i, front_settings) for i in range(self.frontends)]
        finally:
            if probe is not None:
                probe.close()
        print(f"seqinfer: serving on {self.settings.host}:{port}", flush=True)
        print(f"seqinfer: front ends on ports {', '.join(map(str, own))}", flush=True)
        return await self._watch(stop, front_settings)

    async def _watch(self, stop: asyncio.Event, front_settings: Settings) -> int:
        assert self._engine is not None
        engine_exit = asyncio.ensure_future(self._engine.wait())
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            exits = {asyncio.ensure_future(p.wait()): i for i, p in self._fronts.items()}
            done, _ = await asyncio.wait(
                {engine_exit, stopping, *exits}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in exits:
                if task not in done:
                    task.cancel()
            if engine_exit in done:
                log.error(
                    "the engine process exited (%s); stopping the server", engine_exit.result()
                )
                await self._stop_frontends()
                return 1
            if stopping in done:
                return await self._shutdown(engine_exit)
            for task in done:
                index = exits[task]
                log.error("front end %d exited (%s); starting it again", index, task.result())
                await self._start_frontend(index, front_settings)

    def _forward_sighup(self) -> None:
        # The front ends hold TLS and check tokens; the engine holds the tenants'
        # quotas and model lists, so it re-reads the token file too (first: a
        # token new to a front end should find its quotas already in place).
        log.info("SIGHUP: reloading TLS and token files in %d front ends", len(self._fronts))
        if self.settings.auth_token_file is not None and self._engine_ready:
            assert self._engine is not None
            _signal(self._engine, signal.SIGHUP)
        for process in self._fronts.values():
            _signal(process, signal.SIGHUP)

    async def _stop_frontends(self) -> list[int]:
        for process in self._fronts.values():
            _signal(process, signal.SIGTERM)
        return [await process.wait() for process in self._fronts.values()]

    async def _shutdown(self, engine_exit: asyncio.Future[int]) -> int:
        log.info("signal received: stopping the front ends, then the engine")
        codes = await self._stop_frontends()
        assert self._engine is not None
        _signal(self._engine, signal.SIGTERM)
        engine_code = await engine_exit
        return 0 if engine_code == 0 and all(code == 0 for code in codes) else 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this supervisor dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
        pass


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is None:
        try:
            process.send_signal(sig)
        except ProcessLookupError:  # exited since returncode was read
            pass


def frontend_count(settings: Settings) -> int:
    """How many front-end processes ``serve`` starts; 0 = the single-process server."""
    if settings.frontends != "auto":
        return settings.frontends
    cores = os.cpu_count() or 1
    # The engine needs a core, and the load balancer or OS another.
    return 0 if cores <= 2 else min(cores - 2, settings.max_frontends)
