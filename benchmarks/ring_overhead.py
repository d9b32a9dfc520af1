"""What fair batching costs per ready session: ``queues.ReadyRing`` beside a plain deque.

The scheduler appends and pops each ready session once per step, so this
is the ring's whole cost on the hot path; both run in one process, side by
side, and the ratio is what to read (absolute times drift on a busy machine).

    PYTHONPATH=.:proto:service:client python -m benchmarks.ring_overhead
"""

from __future__ import annotations

import timeit
from collections import deque
from typing import Any

from seqinfer.service.queues import ReadyRing
from seqinfer.service.sessions import Session

SESSIONS = 256
ROUNDS = 200


def _cycle(ring: Any, sessions: list[Session]) -> None:
    for session in sessions:
        ring.append(session)
    while ring:
        ring.popleft()


def _best(fn: Any) -> float:
    return min(timeit.repeat(fn, number=ROUNDS, repeat=5))


def main() -> None:
    for tenants in (1, 2, 16):
        sessions = [Session(f"s{i}", 0, 0.0, tenant=f"t{i % tenants}") for i in range(SESSIONS)]
        per = ROUNDS * SESSIONS / 1e9
        plain = _best(lambda s=sessions: _cycle(deque(), s))
        fair = _best(lambda s=sessions: _cycle(ReadyRing(), s))
        print(
            f"{tenants:>2} tenants: deque {plain / per:.0f} ns, ReadyRing {fair / per:.0f} ns "
            f"per session (append + popleft), ratio {fair / plain:.1f}"
        )


if __name__ == "__main__":
    main()
