"""One way for a test to own a child process: `seqinfer serve`, its gated launcher, Prometheus.

Each test that started a real server used to do it its own way, with its
own gaps: a stdout pipe read only up to the serving line (more output would
fill it and block the server), a readiness loop whose ``readline`` could
block past its deadline, a failure path that killed without reaping.
``ChildProcess`` does the parts every child needs once: stdout is read on a
thread into lines (so it never fills), stderr goes to a file (so it never
fills either, and is there to quote when an assertion fails), readiness is
waited for on a signal the child gives (a line, or a probe such as a health
check) with the log in the failure, and leaving the ``with`` block always
stops and reaps the child, killing it when a polite signal is not enough.

``ServeProcess`` is that for the seqinfer CLI: it builds the command, points
the child at this tree, and knows the line the server prints once it
serves. ``tests.gated_serve.GatedServer`` is a ``ServeProcess`` too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
# `python -c`, not the console script: it runs whichever tree is on PYTHONPATH.
CLI = [sys.executable, "-c", "from seqinfer.cli.main import main; main()"]
SERVING = "seqinfer: serving on "
TAIL = 3000


def serve_args(*flags: str) -> list[str]:
    """`serve` on loopback, any free port, no metrics listener, CPU; then ``flags``.

    The metrics port defaults to a fixed 9464, which two servers (or another
    test's) would fight over, so it is off unless a test asks for one.
    """
    return [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        *flags,
    ]


def free_port() -> int:
    """A loopback port free now, for a child that must be told its port in advance."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_pythonpath() -> str:
    """This tree first, with relative entries made absolute (the child may run elsewhere)."""
    entries = [str(ROOT)]
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            entries.append(str(Path(entry).resolve()))
    return os.pathsep.join(entries)


class ChildProcess:
    """A process a test starts and always stops: its stdout lines, its stderr, its exit."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
        name: str = "child",
        stop_grace: float = 30,
    ) -> None:
        """Starts ``command`` with ``env`` set over this process's environment.

        ``stdin``: give the child a pipe to write to (``write``); otherwise it
        reads nothing. ``stop_grace``: how long leaving the ``with`` block
        waits after SIGTERM before it kills; 0 kills at once.
        """
        self.name = name
        self.stop_grace = stop_grace
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._final_log: str | None = None
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    # ------------------------------------------------------------ waiting --

    def _failure(self, why: str) -> AssertionError:
        return AssertionError(f"{self.name} {why}:\n{self.log()[-TAIL:]}")

    def wait_lines(self, prefix: str, count: int = 1, timeout: float = 60) -> list[str]:
        """Blocks until ``count`` stdout lines start with ``prefix``; every such line so far."""

        def found() -> list[str]:
            return [x for x in self.lines if x.startswith(prefix)]

        with self._changed:
            self._changed.wait_for(lambda: len(found()) >= count or self._eof, timeout)
            lines = found()
        if len(lines) < count:
            why = "exited" if self._eof else f"timed out after {timeout}s"
            raise self._failure(f"{why} with {len(lines)} of {count} lines {prefix!r}")
        return lines

    def wait_for(self, probe: Callable[[], object], timeout: float, what: str) -> None:
        """Polls ``probe`` until it is true; fails at once, with the log, if the child exits."""

        def ready() -> bool:
            return self.process.poll() is not None or bool(probe())

        try:
            wait_until(ready, timeout, what)
        except AssertionError as e:
            raise self._failure(str(e)) from None
        if self.process.returncode is not None:
            raise self._failure(f"exited ({self.process.returncode}) before {what}")

    # -------------------------------------------------------- controlling --

    @property
    def pid(self) -> int:
        return self.process.pid

    def write(self, text: str) -> None:
        """Writes to the child's stdin (started with ``stdin=True``)."""
        assert self.process.stdin is not None, f"{self.name} has no stdin pipe"
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        """The exit status; raises ``subprocess.TimeoutExpired`` if still running."""
        return self.process.wait(timeout)

    def log(self) -> str:
        """Everything the child wrote on stderr so far (kept after it is closed)."""
        if self._final_log is not None:
            return self._final_log
        self._stderr.seek(0)
        text = self._stderr.read()
        self._stderr.seek(0, os.SEEK_END)
        return text

    def close(self) -> None:
        """Stops the child if it still runs (SIGTERM; SIGKILL after ``stop_grace``); reaps it."""
        if self.process.poll() is None:
            if self.stop_grace > 0:
                self.terminate()
                try:
                    self.process.wait(self.stop_grace)
                except subprocess.TimeoutExpired:
                    pass
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if self._final_log is None:
            self._final_log = self.log()
            self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ServeProcess(ChildProcess):
    """`seqinfer <args>` (``args`` usually from ``serve_args``), run from this tree."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        program: Sequence[str] = CLI,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
        stop_grace: float = 30,
        metrics_port: int | None = None,
    ) -> None:
        """``program``: what runs the CLI (the console script, a launcher module).

        ``metrics_port``: where the caller has this server's metrics listen (by
        its flags, env or config file); the server announces only its gRPC
        address, so the helper is told rather than guessing.
        """
        self.metrics_port = metrics_port
        super().__init__(
            [*program, *args],
            env={**(env or {}), "PYTHONPATH": child_pythonpath()},
            cwd=cwd,
            stdin=stdin,
            name="server",
            stop_grace=stop_grace,
        )

    def address(self, timeout: float = 60) -> str:
        """Blocks until the server is serving; its host:port."""
        return self.wait_lines(SERVING, 1, timeout)[0].split()[-1]

    def port(self, timeout: float = 60) -> int:
        return int(self.address(timeout).rsplit(":", 1)[1])

    def metrics_url(self) -> str:
        assert self.metrics_port is not None, "this server was started without a metrics port"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"
