"""Sample a running server with py-spy and summarise where its CPU time goes.

py-spy (``pip install py-spy``) attaches by PID and samples Python stacks
without touching the server. ``--format raw`` writes collapsed stacks
("frame;frame;...;frame count" per line), which are summarised here as the
hottest leaf frames (self time) and the hottest functions including callees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Groups for the "where the time goes" split, matched against each frame's
# file. A sample belongs to the first group (in this order) that any frame of
# its stack matches: an engine frame anywhere makes it engine time, a servicer
# frame under grpc's callbacks makes it api time, and so on.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine (torch math, engine thread)", ("service/engine.py",)),
    ("scheduler", ("service/scheduler.py", "service/queues.py", "service/work.py")),
    (
        "engine side: admission, sessions",
        (
            "service/admission.py",
            "service/engine_client.py",
            "service/sessions.py",
            "service/slab.py",
            "service/runtime.py",
            "service/router.py",
            "service/inputs.py",
        ),
    ),
    (
        "gRPC side (proto <-> seam)",
        (
            "service/servicer.py",
            "service/convert.py",
            "service/stream.py",
            "service/results.py",
            "service/guard.py",
            "service/tensors.py",
            "service/status.py",
        ),
    ),
    ("metrics / observer", ("service/metrics/", "service/observer.py")),
    ("grpc core + Cython (HTTP/2, (de)serialisation)", ("cygrpc", "grpc/_cython", "libgrpc")),
    # Without --native, grpc.aio's Cython callbacks run inside Handle._run
    # with no frame of their own, so most of this group is grpc's work.
    ("event loop: asyncio + grpc.aio Cython callbacks", ("asyncio/",)),
    ("OpenMP worker threads (libgomp)", ("libgomp",)),
)


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    samples: int = 0
    # (frame, share of samples) for the leaf frame (self time).
    top_self: list[tuple[str, float]] = field(default_factory=list)
    # (function, share of samples whose stack contains it).
    top_inclusive: list[tuple[str, float]] = field(default_factory=list)
    # Share of samples per group (see GROUPS), by the innermost matching frame.
    groups: dict[str, float] = field(default_factory=dict)
    raw_path: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """``py-spy record`` of one PID for a fixed time, in the background."""

    def __init__(
        self, pid: int, seconds: float, out: Path, rate: int = 200, native: bool = False
    ) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = py_spy()
        self.error = "" if exe else "py-spy not installed"
        if exe:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen(
                [
                    exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                    "--rate", str(rate), "--format", "raw", "--output", str(out),
                    # Native frames (grpc's Cython, torch, OpenMP) need the
                    # process paused per sample; Python-only sampling does not.
                    *(["--native"] if native else ["--nonblocking"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip

    def finish(self, top: int = 15) -> Profile:
        if self.proc is None:
            return Profile(error=self.error)
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 or not self.out.exists():
            return Profile(error=err.decode(errors="replace")[-500:])
        return summarize(self.out, top)


def _function(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (path/file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(path: Path, top: int = 15) -> Profile:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        for function in {_function(f) for f in frames}:
            inclusive[function] += count
        groups[_group(frames)] += count
    if total == 0:
        return Profile(raw_path=str(path), error="no samples")
    return Profile(
        samples=total,
        top_self=[(f, c / total) for f, c in self_counts.most_common(top)],
        top_inclusive=[(f, c / total) for f, c in inclusive.most_common(top)],
        groups={g: c / total for g, c in groups.most_common()},
        raw_path=str(path),
    )


# Leaf frames where a thread waits in C code that py-spy cannot tell from
# work: they are reported as waiting, not as any part of the server.
WAITING_LEAVES: tuple[tuple[str, str], ...] = (
    ("_worker (concurrent/futures/thread.py", "waiting: engine thread idle between batches"),
    ("Thread.run (threading.py", "waiting: grpc poller thread (C, inside epoll)"),
    ("EpollSelector.select (selectors.py", "waiting: event loop in epoll"),
)


def _group(frames: list[str]) -> str:
    for prefix, name in WAITING_LEAVES:
        if frames[-1].startswith(prefix):
            return name
    for name, needles in GROUPS:
        if any(n in frame for frame in frames for n in needles):
            return name
    return "other"
