"""The load matrix's order: the cells a ratio compares run next to each other.

A ratio of two servers' figures means something only when both ran under the
same conditions, and on a shared machine those drift over minutes. So for
each repeat, each N and each transport, every server runs in turn; and which
server goes first rotates, so that no server always runs on the freshest (or
the most tired) machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def matrix_order(
    servers: Sequence[str], sessions: Sequence[int], transports: Sequence[str], repeat: int
) -> Iterator[tuple[str, str, int]]:
    """(server, transport, N) of every load-matrix cell, in the order they run."""
    order = list(servers)
    turn = 0
    for _ in range(repeat):
        for n in sessions:
            for transport in transports:
                first = turn % len(order)
                turn += 1
                for server in order[first:] + order[:first]:
                    yield server, transport, n
