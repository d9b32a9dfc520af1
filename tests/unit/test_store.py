"""The SQLite state store: upserts and deletes commit together or not at all, and persist."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqinfer.service.store import STORE_FILE, SqliteStore


def test_write_read_upsert_delete_and_reopen(tmp_path: Path):
    store = SqliteStore(tmp_path / "state")
    store.write([("a", b"1"), ("b", b"2"), ("c", b"3")])
    store.write([("a", b"1bis")], deletes=["b"])
    assert dict(store.read_all()) == {"a": b"1bis", "c": b"3"}
    store.delete(["c"])
    store.close()
    again = SqliteStore(tmp_path / "state")
    assert dict(again.read_all()) == {"a": b"1bis"}
    again.close()
    with sqlite3.connect(tmp_path / "state" / STORE_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_write_leaves_nothing_of_it(tmp_path: Path):
    store = SqliteStore(tmp_path)
    store.write([("kept", b"old")])

    def records() -> Iterator[tuple[str, bytes]]:
        yield "kept", b"new"
        yield "other", b"x"
        raise RuntimeError("the snapshot failed half-way")

    with pytest.raises(RuntimeError):
        store.write(records(), deletes=["kept"])
    assert dict(store.read_all()) == {"kept": b"old"}
    store.write([("after", b"y")])  # the connection is usable again
    assert dict(store.read_all()) == {"kept": b"old", "after": b"y"}
    store.close()


def test_compare_and_set_on_the_revision(tmp_path: Path):
    from seqinfer.service.store import StoreWrite

    store = SqliteStore(tmp_path)
    assert store.write([StoreWrite("a", 5, b"a5"), StoreWrite("b", 1, b"b1")]) == []
    assert store.write([StoreWrite("a", 4, b"a4"), StoreWrite("b", 2, b"b2")]) == ["a"]
    assert store.read(["a", "b", "missing"]) == {"a": b"a5", "b": b"b2"}
    assert store.write([StoreWrite("a", 5, b"a5bis")]) == []  # equal: accepted
    store.write([("a", b"plain")])  # a plain pair overwrites, keeps the revision
    assert store.revisions(["a", "b"]) == {"a": 5, "b": 2}
    assert store.write([StoreWrite("a", 4, b"old")]) == ["a"]
    assert store.read(["a"]) == {"a": b"plain"}


def test_an_old_schema_file_is_migrated_at_revision_zero(tmp_path: Path):
    from seqinfer.service.store import StoreWrite

    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        db.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, record BLOB NOT NULL)")
        db.execute("INSERT INTO sessions VALUES ('old', x'01')")
    store = SqliteStore(tmp_path)
    assert dict(store.read_all()) == {"old": b"\x01"}
    assert store.revisions(["old"]) == {"old": 0}
    assert store.write([StoreWrite("old", 0, b"\x02")]) == []
    assert store.read(["old"]) == {"old": b"\x02"}
    store.close()


def test_revision_stamps_grow_past_the_clock_and_past_a_seen_revision(monkeypatch):
    import time

    from seqinfer.service.revisions import RevisionClock

    clock = RevisionClock()
    now = 1_800_000_000_000_000  # microseconds
    monkeypatch.setattr(time, "time_ns", lambda: now * 1000)
    first = clock.next()
    assert first == now
    assert clock.next() == now + 1  # same microsecond: still grows
    now -= 5_000_000  # the wall clock set back 5 s
    assert clock.next() == now + 5_000_002
    clock.at_least(now + 10**9)
    assert clock.next() == now + 10**9 + 1
    assert clock.next() < 2**53  # exact in Redis's Lua doubles
