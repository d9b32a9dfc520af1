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
