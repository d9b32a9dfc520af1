"""What a run says while it goes, and the failures it goes on past.

A benchmark run takes minutes and has many parts; one part failing (a server
that does not start, a peer that is not installed) should cost that part,
not the run. So each part runs `guarded`: its failure becomes a line in the
results' "problems" (which makes the exit status non-zero) and the run goes
on. Every line is stamped with the seconds since the run began, so a slow
part shows in the log.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Iterator

from rich.console import Console


class RunLog:
    def __init__(self, console: Console, problems: list[str]) -> None:
        self.console = console
        # The results' own list: a problem recorded here is in the results.
        self.problems = problems
        self._t0 = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        self.console.print(f"[bold]bench[/bold] {elapsed:6.1f}s {message}")

    def problem(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {exc!r}"
        self.problems.append(text)
        self.console.print(f"[red]problem[/red] {text}")
        if os.environ.get("SEQINFER_BENCH_DEBUG"):
            traceback.print_exc()

    @contextlib.contextmanager
    def guarded(self, what: str) -> Iterator[None]:
        """Record a failure of one part and go on with the rest of the run."""
        try:
            yield
        except Exception as exc:
            self.problem(what, exc)
