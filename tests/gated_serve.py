"""``python -m tests.gated_serve <seqinfer args>``: the real CLI with every engine batch held.

A test that signals a server process (SIGTERM, SIGINT, the container's
command) cannot reach inside it to install ``EngineGate``, and sending the
signal "after a while" drains nothing on a fast machine. This launcher puts
the same hold in the process before the CLI starts: each batch that reaches
``GRUEngine.run`` writes ``seqinfer-gate: held <n> <items>`` on stdout and
waits until the test writes ``open`` on the process's stdin; from then on
every batch goes through. End of stdin opens the gate too, so a test that
dies never leaves behind a server that cannot finish.

``SEQINFER_INLINE_MAX_TIMESTEPS=0`` is forced: a batch held on the event-loop
thread would freeze health, drain and every other RPC instead of one batch.

``GatedServer`` is the test's side: it starts the launcher, reads its stdout
on a thread, and waits for lines with bounded timeouts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

HELD = "seqinfer-gate: held "
SERVING = "seqinfer: serving on "
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------- launcher --


class _StdinGate:
    """Closed until ``open`` (or the end of stdin) arrives."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open = False
        self._held = 0

    def read_commands(self) -> None:
        for line in sys.stdin:
            if line.strip() == "open":
                break
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def wrap(self, run: Any) -> Any:
        gate = self

        def gated_run(engine: Any, slab: Any, items: list[Any]) -> Any:
            with gate._changed:
                gate._held += 1
                if not gate._open:
                    # One write of one short line: atomic on a pipe.
                    os.write(1, f"{HELD}{gate._held} {len(items)}\n".encode())
                    # Bounded, like EngineGate, so an orphan cannot hold forever.
                    gate._changed.wait_for(lambda: gate._open, 300)
            return run(engine, slab, items)

        return gated_run


def main(argv: list[str]) -> None:
    os.environ["SEQINFER_INLINE_MAX_TIMESTEPS"] = "0"
    from seqinfer.service.engine import GRUEngine

    gate = _StdinGate()
    GRUEngine.run = gate.wrap(GRUEngine.run)  # type: ignore[method-assign]
    threading.Thread(target=gate.read_commands, name="gate-stdin", daemon=True).start()
    from seqinfer.cli.main import app

    app(argv, prog_name="seqinfer")


# ---------------------------------------------------------- test's side --


def _child_pythonpath() -> str:
    """This tree first, with relative entries made absolute (the child may run elsewhere)."""
    entries = [str(ROOT)]
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            entries.append(str(Path(entry).resolve()))
    return os.pathsep.join(entries)


class GatedServer:
    """A launcher process: its address, its held batches, and the lever to open the gate."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        child_env = {**(os.environ if env is None else env), "PYTHONPATH": _child_pythonpath()}
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.gated_serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=child_env,
            cwd=cwd,
        )
        self._changed = threading.Condition()
        self.lines: list[str] = []
        self._eof = False
        threading.Thread(target=self._read, name="gated-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _wait_line(self, predicate: Any, what: str, timeout: float) -> list[str]:
        with self._changed:
            found = self._changed.wait_for(
                lambda: [x for x in self.lines if predicate(x)] or self._eof, timeout
            )
            matches = [x for x in self.lines if predicate(x)]
        if not matches:
            why = "exited" if found else f"timed out after {timeout}s"
            raise AssertionError(f"server {why} before {what}:\n{self.log()[-3000:]}")
        return matches

    def address(self, timeout: float = 60) -> str:
        """Blocks until the server is serving; its host:port."""
        line = self._wait_line(lambda x: x.startswith(SERVING), "serving", timeout)[0]
        return line.split()[-1]

    def wait_held(self, batches: int = 1, timeout: float = 60) -> list[int]:
        """Blocks until ``batches`` batches are held in all; the item count of each."""

        def held(lines: list[str]) -> list[str]:
            return [x for x in lines if x.startswith(HELD)]

        with self._changed:
            self._changed.wait_for(lambda: len(held(self.lines)) >= batches or self._eof, timeout)
            found = held(self.lines)
        if len(found) < batches:
            raise AssertionError(f"{len(found)} of {batches} batches held:\n{self.log()[-3000:]}")
        return [int(x.split()[-1]) for x in found]

    def open(self) -> None:
        """Let every batch through from now on."""
        assert self.process.stdin is not None
        self.process.stdin.write("open\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> GatedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
