"""`seqinfer sessions list|export|import|delete`: an operator's hands on a session store.

These read and write the store directly (``<state_dir>/sessions.sqlite3``,
or with ``--state-store redis`` the Redis at ``--redis-url``: ``session_stores``),
not through a server: a store is there to be inspected, backed up and moved when no
server is up (after a SIGTERM, on the way to another host). ``list`` and
``export`` open the file read-only, so they work while a server runs (a WAL
reader neither blocks the server's snapshots nor is blocked by them) and see
its last committed snapshot. ``import`` and ``delete`` write; a running
server neither sees what they write nor keeps away from it (its sessions are
in memory and its next snapshot rewrites them), so they are for a stopped
server's store, which docs/durability.md says.

Records are judged by ``records.SessionRecord.decode``: what decodes is
"ok"; what does not is "refused" with the reason, exactly as a server's
restore would refuse it. Whether a record fits a model (name, version,
state shape) is for the server that serves the model to say; this command
does not load models, and imports no torch.

Exit status: 0 when everything asked was done, 1 when something was
refused or not found (what could be done was done, and every refusal is on
stderr with the session named), 2 for a usage error.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from seqinfer.cli.common import TYPER_SETTINGS, OutputFormat, OutputOpt, format_table, print_json
from seqinfer.cli.session_archive import ArchiveError, read_archive, write_archive
from seqinfer.cli.session_stores import (
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    RedisPrefixOpt,
    RedisUrlOpt,
    StateDirOpt,
    StoreChoice,
    StoreError,
    StoreKind,
    StoreKindOpt,
)
from seqinfer.service.records import RecordError, SessionRecord
from seqinfer.service.store import StateStore, StoreUnavailable
from seqinfer.service.tenants import session_key


class Replace(StrEnum):
    """What `sessions import` does with a session the store already holds."""

    newer = "newer"
    always = "always"
    never = "never"


TenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", help="Only this tenant's sessions ('' = sessions without a tenant)."),
]


@dataclass(slots=True, frozen=True)
class Entry:
    """One stored row as judged: its record when it decodes, else why not."""

    key: str
    data: bytes
    record: SessionRecord | None
    refused: str  # "" when the record decodes

    @property
    def tenant(self) -> str:
        return self.record.tenant if self.record else _split_key(self.key)[0]

    @property
    def session_id(self) -> str:
        return self.record.session_id if self.record else _split_key(self.key)[1]


def _split_key(key: str) -> tuple[str, str]:
    """(tenant, id) of a store key, inverting ``tenants.session_key`` (U+001F between)."""
    tenant, sep, session_id = key.partition("\x1f")
    return (tenant, session_id) if sep else ("", key)


def judge(key: str, data: bytes) -> Entry:
    try:
        return Entry(key, data, SessionRecord.decode(data, key), "")
    except RecordError as bad:
        return Entry(key, data, None, bad.reason)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def read_store(store: StoreChoice) -> list[Entry]:
    """Every record of the store, by key, judged (works beside a running server)."""
    try:
        return [judge(key, data) for key, data in store.read()]
    except StoreError as exc:
        raise _fail(str(exc)) from exc


def _writing(store: StoreChoice) -> StateStore:
    try:
        return store.open()
    except StoreError as exc:
        raise _fail(str(exc)) from exc


def _matches(entry: Entry, tenant: str | None, model: str | None) -> bool:
    if tenant is not None and entry.tenant != tenant:
        return False
    if model is None:
        return True
    if entry.record is None:
        return False  # whose model it is cannot be read
    name, _, version = model.partition(":")
    return entry.record.model == name and (not version or entry.record.model_version == version)


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_json(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tenant": entry.tenant,
        "session_id": entry.session_id,
        "record_bytes": len(entry.data),
        "status": "refused" if entry.refused else "ok",
    }
    record = entry.record
    if record is None:
        return {**out, "refused": entry.refused}
    replay = record.replay
    return {
        **out,
        "model": record.model,
        "model_version": record.model_version,
        "step": record.step,
        "state_dtype": record.state.dtype,
        "state_shape": list(record.state.shape),
        "state_bytes": len(record.state.data),
        "idle_ttl": record.idle_ttl,
        "created_at": _utc(record.created_at),
        "last_used": _utc(record.last_used),
        "last_request_id": replay.request_id if replay else None,
    }


LIST_COLUMNS = ("tenant", "session", "model", "step", "state_bytes", "last_used_utc", "status")


def _row(entry: Entry) -> tuple[Any, ...]:
    record = entry.record
    tenant = entry.tenant or "-"
    if record is None:
        return (tenant, entry.session_id, "-", "-", "-", "-", f"refused: {entry.refused}")
    return (
        tenant,
        record.session_id,
        record.model_key,
        record.step,
        len(record.state.data),
        _utc(record.last_used),
        "ok",
    )


def _newer(incoming: SessionRecord, stored: bytes, key: str) -> bool:
    """Whether ``incoming`` should replace what is stored under ``key`` (policy "newer")."""
    try:
        current = SessionRecord.decode(stored, key)
    except RecordError:
        return True  # an unreadable record is worth nothing to keep
    return (incoming.step, incoming.last_used) > (current.step, current.last_used)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Inspect, back up and move a durable session store (docs/durability.md). "
        "Works on the files; no server needed.",
        no_args_is_help=True,
        **TYPER_SETTINGS,
    )
    app.add_typer(group, name="sessions")

    @group.command("list")
    def list_(
        state_dir: StateDirOpt = None,
        state_store: StoreKindOpt = StoreKind.sqlite,
        redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
        redis_key_prefix: RedisPrefixOpt = DEFAULT_PREFIX,
        tenant: TenantOpt = None,
        output: OutputOpt = OutputFormat.table,
    ) -> None:
        """One line per stored session: ok, or refused and why. Safe while a server runs."""
        store = StoreChoice(state_store, state_dir, redis_url, redis_key_prefix)
        entries = [e for e in read_store(store) if _matches(e, tenant, None)]
        if output is OutputFormat.json:
            print_json([_as_json(e) for e in entries])
        else:
            typer.echo(format_table(LIST_COLUMNS, [_row(e) for e in entries]))

    @group.command("export")
    def export(
        out: Annotated[
            str, typer.Option("--out", help="File to write; - for stdout.", show_default=False)
        ],
        tenant: TenantOpt = None,
        model: Annotated[
            str | None, typer.Option("--model", help="Only this model: NAME or NAME:VERSION.")
        ] = None,
        state_dir: StateDirOpt = None,
        state_store: StoreKindOpt = StoreKind.sqlite,
        redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
        redis_key_prefix: RedisPrefixOpt = DEFAULT_PREFIX,
    ) -> None:
        """Write stored sessions to one portable file, records as stored."""
        store = StoreChoice(state_store, state_dir, redis_url, redis_key_prefix)
        picked: list[Entry] = []
        skipped: list[Entry] = []
        for entry in read_store(store):
            if not _matches(entry, tenant, model):
                continue
            (skipped if entry.refused else picked).append(entry)
        for entry in skipped:
            typer.echo(f"skipped session {entry.key!r}: {entry.refused}", err=True)
        pairs = [(e.key, e.data) for e in picked]
        if out == "-":
            write_archive(sys.stdout.buffer, pairs)
            sys.stdout.buffer.flush()
        else:
            # Written aside and renamed: a failed export never leaves a
            # half-file under the name a backup script will keep.
            part = Path(f"{out}.part")
            try:
                with open(part, "wb") as file:
                    write_archive(file, pairs)
                os.replace(part, out)
            except OSError as exc:
                part.unlink(missing_ok=True)
                raise _fail(f"cannot write {out}: {exc}") from exc
        typer.echo(f"exported {len(pairs)} sessions, skipped {len(skipped)} refused", err=True)
        if skipped:
            raise typer.Exit(1)

    @group.command("import")
    def import_(
        file: Annotated[
            str,
            typer.Argument(help="An export file (`sessions export`); - for stdin.", metavar="FILE"),
        ],
        replace: Annotated[
            Replace,
            typer.Option(
                "--replace",
                help="When a session is already stored: newer = keep whichever has the higher "
                "step counter (then the later last use); always = the imported one; "
                "never = the stored one.",
            ),
        ] = Replace.newer,
        state_dir: StateDirOpt = None,
        state_store: StoreKindOpt = StoreKind.sqlite,
        redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
        redis_key_prefix: RedisPrefixOpt = DEFAULT_PREFIX,
    ) -> None:
        """Add the sessions of an export file to a store (stop its server first)."""
        choice = StoreChoice(state_store, state_dir, redis_url, redis_key_prefix)
        try:
            data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
            entries = read_archive(data)
        except OSError as exc:
            raise _fail(f"cannot read {file}: {exc}") from exc
        except ArchiveError as exc:
            raise _fail(f"{file}: {exc}; nothing imported") from exc
        store = _writing(choice)
        try:
            stored = dict(store.read_all())
            writes, kept, refused = [], 0, 0
            for key, record_bytes in entries:
                entry = judge(key, record_bytes)
                if entry.record is None:
                    typer.echo(f"refused session {key!r}: {entry.refused}", err=True)
                    refused += 1
                    continue
                if key in stored and (
                    replace is Replace.never
                    or (replace is Replace.newer and not _newer(entry.record, stored[key], key))
                ):
                    kept += 1
                    continue
                writes.append((key, record_bytes))
            # One write: a SQLite transaction; on Redis, scripts of bounded size.
            store.write(writes)
        except StoreUnavailable as lost:
            raise _fail(f"{lost}; nothing imported from this call may be assumed") from lost
        finally:
            store.close()
        typer.echo(
            f"imported {len(writes)} sessions, kept {kept} stored ones, refused {refused}",
            err=True,
        )
        if refused:
            raise typer.Exit(1)

    @group.command("delete")
    def delete(
        session_ids: Annotated[
            list[str], typer.Argument(help="Session ids to delete.", metavar="ID...")
        ],
        tenant: Annotated[str, typer.Option("--tenant", help="Whose sessions ('' = none).")] = "",
        state_dir: StateDirOpt = None,
        state_store: StoreKindOpt = StoreKind.sqlite,
        redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
        redis_key_prefix: RedisPrefixOpt = DEFAULT_PREFIX,
    ) -> None:
        """Delete stored sessions by id (stop the server first, or it writes them back)."""
        choice = StoreChoice(state_store, state_dir, redis_url, redis_key_prefix)
        known = {e.key for e in read_store(choice)}
        session_ids = list(dict.fromkeys(session_ids))  # each id once, in order
        keys = [session_key(tenant, sid) for sid in session_ids]
        missing = [sid for sid, key in zip(session_ids, keys) if key not in known]
        store = _writing(choice)
        try:
            store.delete([key for key in keys if key in known])
        except StoreUnavailable as lost:
            raise _fail(str(lost)) from lost
        finally:
            store.close()
        for sid in missing:
            typer.echo(
                f"no stored session {sid!r}" + (f" of tenant {tenant!r}" if tenant else ""),
                err=True,
            )
        typer.echo(f"deleted {len(keys) - len(missing)} sessions", err=True)
        if missing:
            raise typer.Exit(1)
