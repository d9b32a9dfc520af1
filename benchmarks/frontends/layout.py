"""A seqinfer server under test and its processes: which pid is the supervisor, engine, front end.

The price of the split is paid by every process of the server, so CPU is
read per process from /proc, never from the tree alone: the per-role sums
are what the figures compare (engine CPU per item against front-end CPU per
message, the spread over front ends). ``serve --frontends K`` announces its
children on stdout (``seqinfer: engine ready (pid N)``, ``seqinfer: front
end I on port P (pid N)``), which the harness copies to the server's log, so
the layout is read from there rather than guessed from the process tree.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import servers
from benchmarks.procs import cpu_seconds

ENGINE_LINE = re.compile(r"seqinfer: engine ready \(pid (\d+)\)")
FRONT_LINE = re.compile(r"seqinfer: front end (\d+) on port (\d+) \(pid (\d+)\)")


@dataclass
class Layout:
    """One running server: K = 0 is the single process (it is then ``supervisor``)."""

    name: str
    frontends: int
    target: servers.Target
    engine_pid: int | None = None
    # Front end index -> (pid, own port).
    fronts: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def supervisor_pid(self) -> int:
        return self.target.pid

    def own_addresses(self) -> list[str]:
        """The front ends' own ports, for the client's round-robin option."""
        return [f"127.0.0.1:{port}" for _, (_, port) in sorted(self.fronts.items())]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per process: ``supervisor``, ``engine``, ``frontend-<i>``."""
        readings = {"supervisor": cpu_seconds(self.supervisor_pid)}
        if self.engine_pid is not None:
            readings["engine"] = cpu_seconds(self.engine_pid)
        for index, (pid, _) in sorted(self.fronts.items()):
            readings[f"frontend-{index}"] = cpu_seconds(pid)
        return readings

    def stop(self) -> None:
        self.target.stop()


def parse_log(text: str) -> tuple[int | None, dict[int, tuple[int, int]]]:
    """(engine pid, {front end: (pid, own port)}) from a ``serve --frontends K`` log."""
    engine = None
    fronts: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        if match := ENGINE_LINE.search(line):
            engine = int(match[1])
        elif match := FRONT_LINE.search(line):
            # The latest announcement wins: a restarted front end has a new pid.
            fronts[int(match[1])] = (int(match[3]), int(match[2]))
    return engine, fronts


def start(
    log_dir: Path, frontends: int, name: str = "", extra: tuple[str, ...] = (), timeout: float = 120
) -> Layout:
    """``seqinfer serve --frontends K`` (the harness's way: loopback, metrics on, CPU device)."""
    name = name or f"seqinfer-k{frontends}"
    target = servers.start_seqinfer(log_dir, ("--frontends", str(frontends), *extra), name=name)
    layout = Layout(name, frontends, target)
    if frontends == 0:
        return layout
    assert target.process is not None
    log_path = target.process.log_path
    deadline = time.monotonic() + timeout
    # The server answered ListModels, so at least one front end serves; the
    # others print their lines within moments of it.
    while True:
        engine, fronts = parse_log(log_path.read_text(errors="replace"))
        if engine is not None and len(fronts) == frontends:
            break
        if time.monotonic() > deadline:
            target.stop()
            raise TimeoutError(f"{name}: {len(fronts)} of {frontends} front ends announced")
        time.sleep(0.1)
    layout.engine_pid, layout.fronts = engine, fronts
    return layout
