"""Where session records are kept between runs: one interface, SQLite behind it for now.

The interface is what a snapshot needs and no more: write many records and
delete many ids in one transaction (so a snapshot is all there or not at
all), read everything back at start-up, close. Records are opaque bytes
here (``records`` encodes and checks them); the store keys them by the
session table's key (``tenants.session_key``: the id, prefixed with its
tenant when there is one), which is unique across a server's models.

Every method blocks; callers on the event loop run them in a thread
(``asyncio.to_thread``), because writing 100,000 sessions takes long enough
to stall serving otherwise. One connection shared by those threads, behind
a lock: SQLite serialises writers anyway, and calls are rare (a snapshot
every few seconds at most).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

STORE_FILE = "sessions.sqlite3"


class StoreUnavailable(Exception):
    """The store could not be reached (a networked store: Redis). Callers map
    it to UNAVAILABLE: the write may be retried once the store is back."""


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """One record with the session's revision: a store that compares-and-sets
    (RedisStore) never lets a lower revision overwrite a higher one held."""

    key: str
    revision: int
    record: bytes


class StateStore(Protocol):
    def write(self, records: Iterable[tuple[str, bytes]], deletes: Iterable[str] = ()) -> object:
        """Upsert ``(session_id, record)`` pairs and delete ids, in one transaction."""
        ...

    def read_all(self) -> Iterator[tuple[str, bytes]]:
        """Every ``(session_id, record)`` held."""
        ...

    def delete(self, session_ids: Iterable[str]) -> None: ...

    def close(self) -> None: ...


class SqliteStore:
    """``<state_dir>/sessions.sqlite3``: one table, session id → record bytes."""

    def __init__(self, state_dir: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STORE_FILE
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun and committed explicitly
        # below, not implicitly by the sqlite3 module.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # WAL: a snapshot's transaction does not block a reader (the sessions
        # CLI, a backup), and a crash mid-write leaves the last commit intact.
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode both levels make a commit atomic and keep it through a
        # crash of the process: the commit is in the OS's file cache when
        # write() returns. They differ on a crash of the machine (power, kernel):
        # NORMAL syncs the WAL only at checkpoints, so the last commits may go;
        # FULL syncs at every commit. Snapshot mode takes NORMAL: losing the last
        # snapshot with the machine is within what the mode promises. Write-through
        # takes FULL (setting sync_commits), because there a commit stands for a
        # reply already sent; with group commit that is one fsync per batch, not
        # per step. sync_commits=false gives write-through NORMAL: the process
        # may crash at any point without losing an acknowledged step.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions "
            "(session_id TEXT PRIMARY KEY, record BLOB NOT NULL)"
        )

    def write(self, records: Iterable[tuple[str, bytes]], deletes: Iterable[str] = ()) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO sessions (session_id, record) VALUES (?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET record = excluded.record",
                    records,
                )
                self._db.executemany(
                    "DELETE FROM sessions WHERE session_id = ?", ((sid,) for sid in deletes)
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read_all(self) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT session_id, record FROM sessions").fetchall()
        for session_id, record in rows:
            yield str(session_id), bytes(record)

    def delete(self, session_ids: Iterable[str]) -> None:
        self.write((), session_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()
