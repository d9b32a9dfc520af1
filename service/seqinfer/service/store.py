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

Compare-and-set: a record written as ``StoreWrite`` carries its session's
revision, and a store never lets a lower one overwrite a higher one held
(the keys refused are returned), so a late writer cannot put back an older
state. Plain ``(key, record)`` pairs overwrite, for callers that order their
writes themselves (the one store thread in ``durability``). The Redis store
(``store_redis``) keeps the same interface.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

STORE_FILE = "sessions.sqlite3"
# Under BEGIN IMMEDIATE nothing else writes between the upsert and the count
# of the rows it changed.
_CAS_UPSERT = (
    "INSERT INTO sessions (session_id, record, revision) VALUES (?, ?, ?) "
    "ON CONFLICT(session_id) DO UPDATE SET record = excluded.record, "
    "revision = excluded.revision WHERE excluded.revision >= sessions.revision"
)


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
    def write(
        self, records: Iterable[tuple[str, bytes] | StoreWrite], deletes: Iterable[str] = ()
    ) -> list[str] | None:
        """Upsert ``(session_id, record)`` pairs and ``StoreWrite``s (compare-and-set)
        and delete ids, in one transaction; returns the keys refused as stale."""
        ...

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The records held for ``keys`` (lazy restore reads a few, not all)."""
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
        # 16 KiB pages for a new file (an existing one keeps its own): a record of
        # a 2 KiB state is ~2.7 KiB, one to a default 4 KiB page with a third of
        # it empty, five to a 16 KiB page; a batch's commit then writes fewer
        # pages to the WAL (measured: a 256-session commit ~20 % faster) and
        # the file is smaller. Must precede journal_mode, which creates the file.
        self._db.execute("PRAGMA page_size=16384")
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
            "CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, "
            "record BLOB NOT NULL, revision INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "revision" not in columns:
            # A file from before compare-and-set: its records count as revision 0,
            # so any write with a revision replaces them.
            self._db.execute("ALTER TABLE sessions ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")

    def write(
        self,
        records: Iterable[tuple[str, bytes] | StoreWrite],
        deletes: Iterable[str] = (),
    ) -> list[str]:
        """One transaction; returns the keys refused as stale.

        A ``StoreWrite`` replaces the held record only if its revision is not
        lower than the held one; a plain pair overwrites and keeps the revision.
        """
        plain: list[tuple[str, bytes]] = []
        checked: list[tuple[str, bytes, int]] = []
        for entry in records:
            if isinstance(entry, StoreWrite):
                checked.append((entry.key, entry.record, entry.revision))
            else:
                plain.append(entry)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stale: list[str] = []
                if plain:
                    self._db.executemany(
                        "INSERT INTO sessions (session_id, record) VALUES (?, ?) "
                        "ON CONFLICT(session_id) DO UPDATE SET record = excluded.record",
                        plain,
                    )
                if checked:
                    # One prepared statement for the batch, not a statement and a
                    # rowcount per row (a fifth of a 256-session commit went there).
                    # A refused row changes nothing, so the total tells whether any
                    # was refused; only then are the refused ones looked up.
                    changed = self._db.executemany(_CAS_UPSERT, checked).rowcount
                    if changed != len(checked):
                        stale = self._stale(checked)
                if deletes:
                    self._db.executemany(
                        "DELETE FROM sessions WHERE session_id = ?", ((sid,) for sid in deletes)
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return stale

    def _stale(self, checked: list[tuple[str, bytes, int]]) -> list[str]:
        """The keys of ``checked`` whose held revision is above the one written
        (inside the write's transaction: nothing else has written since)."""
        stale = []
        for key, _, revision in checked:
            row = self._db.execute(
                "SELECT revision FROM sessions WHERE session_id = ?", (key,)
            ).fetchone()
            if row is not None and int(row[0]) > revision:
                stale.append(key)
        return stale

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The records held for ``keys``; keys not held are left out."""
        with self._lock:
            found: dict[str, bytes] = {}
            for key in keys:
                row = self._db.execute(
                    "SELECT record FROM sessions WHERE session_id = ?", (key,)
                ).fetchone()
                if row is not None:
                    found[key] = bytes(row[0])
            return found

    def revisions(self, keys: Sequence[str]) -> dict[str, int]:
        with self._lock:
            held: dict[str, int] = {}
            for key in keys:
                row = self._db.execute(
                    "SELECT revision FROM sessions WHERE session_id = ?", (key,)
                ).fetchone()
                if row is not None:
                    held[key] = int(row[0])
            return held

    def read_all(self) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT session_id, record FROM sessions").fetchall()
        for session_id, record in rows:
            yield str(session_id), bytes(record)

    def read_heads(self, size: int) -> Iterator[tuple[str, bytes]]:
        """Every key with the first ``size`` bytes of its record (a lazy restore
        reads the headers, not the states)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, substr(record, 1, ?) FROM sessions", (size,)
            ).fetchall()
        for session_id, head in rows:
            yield str(session_id), bytes(head)

    def delete(self, session_ids: Iterable[str]) -> None:
        self.write((), session_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()
