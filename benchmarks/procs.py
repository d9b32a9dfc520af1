"""Start, watch and stop the servers under test, by PID, and read their RSS and CPU.

Every server the harness starts is stopped by the PID it started (SIGTERM,
then SIGKILL after a grace period), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# RSS is read in bytes and shown in MiB.
MIB = 2**20


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (TorchServe is a JVM plus Python workers)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def rss_bytes(pid: int, tree: bool = False) -> int:
    """Resident set size of `pid` (and its descendants when `tree`)."""
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU seconds used so far by `pid` (and descendants when `tree`)."""
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


class ServerProcess:
    """A server started as a child process; stdout and stderr go to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._listening = threading.Event()
        self._log_thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=self._pump, daemon=True)
        self._log_thread.start()

    def _pump(self) -> None:
        # Copies output to the log and notices the "LISTENING <port>" line
        # that the baseline servers print once bound.
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("wb") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(b"LISTENING ") and not self._listening.is_set():
                    self.port = int(line.split()[1])
                    self._listening.set()

    def wait_listening(self, timeout: float) -> int:
        """Wait for the "LISTENING <port>" line; return the port."""
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not report a port within {timeout} s")
        assert self.port is not None
        return self.port

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll `probe` until it returns True."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if probe():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout} s; see {self.log_path}")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self._log_thread is not None:
            self._log_thread.join(2)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start `server` and stop it on exit, whatever happens in between."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
