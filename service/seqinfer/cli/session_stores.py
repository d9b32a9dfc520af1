"""Which store `seqinfer sessions` works on: a state_dir's SQLite file, or a Redis.

The same choice ``serve`` makes, with the same settings and environment
variables (``state_store``, ``state_dir``, ``redis_url``,
``redis_key_prefix``), so an operator points the command at a store the way
the server was pointed at it. Reading differs by store only in how it stays
out of a running server's way: SQLite is opened read-only (a WAL reader
neither blocks the server's commits nor waits for them); Redis is read with
SCAN and pipelines of bounded size (``store_redis``), so a large store does
not stall the Redis that serving writes to.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from seqinfer.service.store import STORE_FILE, SqliteStore, StateStore, StoreUnavailable


class StoreKind(StrEnum):
    sqlite = "sqlite"
    redis = "redis"


StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="SEQINFER_STATE_DIR",
        show_envvar=True,
        file_okay=False,
        help="With --state-store sqlite: the server's state_dir (the store is "
        "STATE_DIR/sessions.sqlite3).",
    ),
]
StoreKindOpt = Annotated[
    StoreKind,
    typer.Option(
        "--state-store",
        envvar="SEQINFER_STATE_STORE",
        show_envvar=True,
        help="The store: sqlite (--state-dir) or redis (--redis-url).",
    ),
]
RedisUrlOpt = Annotated[
    str,
    typer.Option(
        "--redis-url",
        envvar="SEQINFER_REDIS_URL",
        show_envvar=True,
        help="With --state-store redis: the Redis (redis:// or rediss:// URL).",
    ),
]
RedisPrefixOpt = Annotated[
    str,
    typer.Option(
        "--redis-key-prefix",
        envvar="SEQINFER_REDIS_KEY_PREFIX",
        show_envvar=True,
        help="With --state-store redis: the prefix of the server's session keys.",
    ),
]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "seqinfer:session:"  # store_redis.DEFAULT_PREFIX, without importing redis


class StoreError(Exception):
    """The store cannot be read or written; the message says which and why."""


@dataclass(frozen=True, slots=True)
class StoreChoice:
    kind: StoreKind
    state_dir: Path | None
    redis_url: str
    prefix: str

    def __post_init__(self) -> None:
        if self.kind is StoreKind.sqlite and self.state_dir is None:
            raise typer.BadParameter(
                "--state-dir is required with --state-store sqlite", param_hint="--state-dir"
            )

    def describe(self) -> str:
        if self.kind is StoreKind.redis:
            return f"redis at {self.redis_url} (prefix {self.prefix!r})"
        assert self.state_dir is not None
        return str(self.state_dir / STORE_FILE)

    def read(self) -> list[tuple[str, bytes]]:
        """Every ``(key, record)`` held, by key; creates nothing."""
        if self.kind is StoreKind.redis:
            store = self.open()
            try:
                return sorted(store.read_all())
            except StoreUnavailable as lost:
                raise StoreError(str(lost)) from lost
            finally:
                store.close()
        assert self.state_dir is not None
        path = self.state_dir / STORE_FILE
        if not path.is_file():
            raise StoreError(f"no session store at {path}")
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT session_id, record FROM sessions ORDER BY session_id")
                return [(str(key), bytes(data)) for key, data in rows]
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

    def open(self) -> StateStore:
        """The store to write (SQLite: created if missing)."""
        if self.kind is StoreKind.redis:
            from seqinfer.service.store_redis import RedisStore  # only when asked for

            try:
                return RedisStore(self.redis_url, self.prefix)
            except StoreUnavailable as lost:
                raise StoreError(str(lost)) from lost
        assert self.state_dir is not None
        return SqliteStore(self.state_dir)
