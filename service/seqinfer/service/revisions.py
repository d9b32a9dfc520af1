"""The revision a server writes a session record with: it only grows for a key.

Why not the step counter: it goes down. A ``reset`` step starts it again
from the step's own timesteps, ``ImportState`` sets it to whatever the
imported state had, and a session closed and created again under the same
id starts from 0 while the store may still hold its old record (a close is
deleted from the store by the next periodic pass, not at once). A store's
compare-and-set on the counter would then refuse the newer state.

So a revision is a stamp from one clock per server: the wall clock in
microseconds, forced to grow by at least one at every stamp. Within a
session's life the stamps order its writes as its steps do (each write is
stamped on the event loop when it is issued, after every earlier write of
that session was issued), and across close/recreate, fork, import and
reset they keep growing where the counter would not. Across a restart
they keep growing because the clock does: a restart takes longer than the
wall clock can be stepped back by NTP in normal operation. If it is stepped
back by more, the store refuses this server's writes until the clock has
caught up (visible: ``durability`` logs the refused keys and write-through
answers the steps STORE_UNAVAILABLE), which delays; it never lets an older
state overwrite a newer one. Several servers sharing a Redis store get
last-writer-wins by wall clock, which is what a shared store can offer
without consensus.

A stamp stays below 2**53 (until the year 2255), so Redis's Lua, whose numbers
are doubles, compares it exactly.
"""

from __future__ import annotations

import time


class RevisionClock:
    """Strictly increasing stamps, at least the wall clock in microseconds."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        stamp = max(self._last + 1, time.time_ns() // 1000)
        self._last = stamp
        return stamp

    def at_least(self, revision: int) -> None:
        """Stamps from now on are above ``revision`` (one seen in the store)."""
        self._last = max(self._last, revision)
