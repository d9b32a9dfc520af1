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

``GatedServer`` is the test's side: a ``tests.serve_process.ServeProcess``
running this launcher, which also waits for the held lines and opens the gate.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from tests.serve_process import ServeProcess

HELD = "seqinfer-gate: held "
LAUNCHER = [sys.executable, "-m", "tests.gated_serve"]


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


class GatedServer(ServeProcess):
    """A launcher process: its address, its held batches, and the lever to open the gate."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        # Killed, not drained, when the block ends: a drain would wait on held batches.
        super().__init__(args, program=LAUNCHER, env=env, cwd=cwd, stdin=True, stop_grace=0)

    def wait_held(self, batches: int = 1, timeout: float = 60) -> list[int]:
        """Blocks until ``batches`` batches are held in all; the item count of each."""
        return [int(x.split()[-1]) for x in self.wait_lines(HELD, batches, timeout)]

    def open(self) -> None:
        """Let every batch through from now on."""
        self.write("open\n")


if __name__ == "__main__":
    main(sys.argv[1:])
