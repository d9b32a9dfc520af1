"""Waiting until a round_robin channel reaches every address, before its first call.

gRPC's round_robin sends a call to one of the subchannels that are READY
when the call starts. A fresh channel turns READY with its first connected
subchannel, so the first calls of a client made with ``addresses=`` all
went to whichever address connected first (under load, or with TLS
handshakes, a good many), and a stream opened then stays there for its
life. gRPC's Python API does not show a channel's subchannels, so this asks
the channel itself: health checks through it until as many distinct servers
have answered as there are addresses. Once round_robin has every address
READY, consecutive calls go to each in turn, so the last probes see them
all. Each seqinfer server says which it is in the health check's trailing
metadata (``SERVER_ID``, a random id per server process, nothing else).

Bounded by a timeout (``ready_timeout``): past it the client sends anyway,
over the addresses ready by then (round_robin adds the others as they
connect). A server that does not name itself (an older seqinfer, another
service) ends the wait at once: there is nothing to count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

# The health service's Check, called with an empty HealthCheckRequest (the
# server's overall health): both sides of it are bytes here, so the client
# needs no health stubs.
PROBE = "/grpc.health.v1.Health/Check"
SERVER_ID = "x-seqinfer-server-id"
DEFAULT_READY_TIMEOUT = 5.0
# Between two probes that met an address already seen: the others are still
# connecting, and a short pause keeps the probes from spinning on one server.
_PAUSE = (0.001, 0.02)


def server_id(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == SERVER_ID:
            return str(value)
    return None


class Spread:
    """The distinct servers seen so far, and whether to go on probing."""

    def __init__(self, count: int, timeout: float) -> None:
        self.count = count
        self.deadline = time.monotonic() + timeout
        self.seen: set[str] = set()
        self.pause = _PAUSE[0]
        self.done = count <= 1

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, metadata: Sequence[tuple[str, Any]] | None) -> float | None:
        """Counts one answer; how long to pause before the next probe, None to stop."""
        found = server_id(metadata)
        if found is None:  # a server that does not name itself: nothing to count
            self.done = True
            return None
        fresh = found not in self.seen
        self.seen.add(found)
        if len(self.seen) >= self.count or self.left() <= 0:
            self.done = True
            return None
        if fresh:
            self.pause = _PAUSE[0]
            return 0.0
        pause, self.pause = self.pause, min(_PAUSE[1], self.pause * 2)
        return min(pause, max(0.0, self.left()))


def wait_spread(channel: grpc.Channel, count: int, timeout: float) -> int:
    """Probes ``channel`` until ``count`` distinct servers answered, or ``timeout``;
    returns how many answered."""
    probe = channel.unary_unary(PROBE)
    spread = Spread(count, timeout)
    while not spread.done and spread.left() > 0:
        try:
            _, call = probe.with_call(b"", timeout=spread.left(), wait_for_ready=True)
            metadata = call.trailing_metadata()
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
            metadata = error.trailing_metadata()  # type: ignore[attr-defined]
        pause = spread.note(metadata)
        if pause:
            time.sleep(pause)
    return len(spread.seen)


async def await_spread(channel: grpc.aio.Channel, count: int, timeout: float) -> int:
    """``wait_spread`` for an asyncio channel."""
    probe = channel.unary_unary(PROBE)
    spread = Spread(count, timeout)
    while not spread.done and spread.left() > 0:
        call = probe(b"", timeout=spread.left(), wait_for_ready=True)
        try:
            await call
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
        pause = spread.note(await call.trailing_metadata())
        if pause:
            await asyncio.sleep(pause)
    return len(spread.seen)
