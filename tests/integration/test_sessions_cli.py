"""`seqinfer sessions list|export|import|delete` on real SQLite stores, and through real servers.

Most tests build a store from hand-made records (fast, no server) and run
the commands in-process; one moves a served store through export and
import into an empty directory and checks that a server started there has
every session back bit-identical, with its counter and its replay record,
and that `list` reads the store while that server runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from seqinfer.cli.main import app
from seqinfer.cli.session_archive import read_archive, write_archive
from seqinfer.service.records import ArrayRecord, ReplayRecord, SessionRecord
from seqinfer.service.store import STORE_FILE, SqliteStore
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture
from tests.serve_process import ServeProcess, child_pythonpath, serve_args
from tests.support import to_tensor

STATE = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
LAST_USED = 1_700_000_100.0  # 2023-11-14T22:15:00Z; a record of step k was last used k s later


def _record(sid: str, tenant: str = "", step: int = 4, model: str = "m") -> SessionRecord:
    return SessionRecord(
        session_id=sid,
        tenant=tenant,
        model=model,
        model_version="1",
        state=ArrayRecord("float32", (2, 8), (STATE + step).tobytes()),
        step=step,
        idle_ttl=60.0,
        created_at=LAST_USED - 100,
        last_used=LAST_USED + step,
        replay=ReplayRecord("r-1", step - 2, step, None, None, False, False),
    )


def _store(state_dir: Path, records: list[SessionRecord], raw: dict[str, bytes] | None = None):
    store = SqliteStore(state_dir)
    store.write([(r.key, r.encode()) for r in records] + list((raw or {}).items()))
    store.close()


def _rows(state_dir: Path) -> dict[str, bytes]:
    with sqlite3.connect(state_dir / STORE_FILE) as db:
        return {k: bytes(v) for k, v in db.execute("SELECT session_id, record FROM sessions")}


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["sessions", *args])


ALICE_A = _record("a", tenant="alice", step=6)
ANON_B = _record("b", step=2, model="other")
ANON_C = _record("c", step=8)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three good sessions (one of tenant alice, one of another model) and one bad record."""
    state = tmp_path / "state"
    _store(state, [ALICE_A, ANON_B, ANON_C], {"junk": b"\x00" * 40})
    return state


def test_list_shows_every_field_and_names_refused_records(store: Path):
    result = _cli("list", "--state-dir", str(store))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "TENANT", "SESSION", "MODEL", "STEP", "STATE_BYTES", "LAST_USED_UTC", "STATUS"
    ]  # fmt: skip
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["a"] == ["alice", "a", "m:1", "6", "64", "2023-11-14T22:15:06Z", "ok"]
    assert rows["c"] == ["-", "c", "m:1", "8", "64", "2023-11-14T22:15:08Z", "ok"]
    assert rows["b"][2:4] == ["other:1", "2"]
    assert " ".join(rows["junk"]).endswith("refused: not a seqinfer session record (bad magic)")

    as_json = _cli("list", "--state-dir", str(store), "-o", "json", "--tenant", "alice")
    assert as_json.exit_code == 0, as_json.output
    (only,) = json.loads(as_json.stdout)
    assert only["tenant"] == "alice" and only["session_id"] == "a" and only["status"] == "ok"
    assert (only["model"], only["model_version"], only["step"]) == ("m", "1", 6)
    assert (only["state_shape"], only["state_dtype"], only["last_request_id"]) == (
        [2, 8], "float32", "r-1"
    )  # fmt: skip
    anon = json.loads(_cli("list", "--state-dir", str(store), "-o", "json", "--tenant", "").stdout)
    assert sorted(e["session_id"] for e in anon) == ["b", "c", "junk"]


def test_list_of_a_missing_store_says_so(tmp_path: Path):
    result = _cli("list", "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert f"no session store at {tmp_path / STORE_FILE}" in result.stderr
    assert not (tmp_path / STORE_FILE).exists()  # a reader creates nothing


def test_export_then_import_into_an_empty_dir_copies_records_byte_for_byte(
    store: Path, tmp_path: Path
):
    out = tmp_path / "all.sqx"
    result = _cli("export", "--state-dir", str(store), "--out", str(out))
    # The bad record is not exported, and the exit status says something was left behind.
    assert result.exit_code == 1
    assert "skipped session 'junk': not a seqinfer session record" in result.stderr
    assert "exported 3 sessions, skipped 1 refused" in result.stderr
    moved = tmp_path / "moved"
    result = _cli("import", "--state-dir", str(moved), str(out))
    assert result.exit_code == 0, result.output
    assert "imported 3 sessions, kept 0 stored ones, refused 0" in result.stderr
    original = _rows(store)
    del original["junk"]
    assert _rows(moved) == original


def test_export_filters_by_tenant_and_model_and_writes_to_stdout(store: Path):
    def keys(*flags: str) -> list[str]:
        result = _cli("export", "--state-dir", str(store), "--out", "-", *flags)
        assert result.exit_code == 0, result.output
        return sorted(key for key, _ in read_archive(result.stdout_bytes))

    assert keys("--tenant", "alice") == [ALICE_A.key]
    assert keys("--model", "other") == ["b"]
    assert keys("--model", "m:1", "--tenant", "") == ["c"]
    assert keys("--model", "m:2") == []


def test_an_export_that_cannot_be_written_says_so_and_leaves_no_file(store: Path, tmp_path: Path):
    out = tmp_path / "no-such-dir" / "x.sqx"
    result = _cli("export", "--state-dir", str(store), "--out", str(out))
    assert result.exit_code == 1 and f"cannot write {out}" in result.stderr
    assert not out.parent.exists()


def _archive(tmp_path: Path, entries: list[tuple[str, bytes]]) -> Path:
    path = tmp_path / "export.sqx"
    with open(path, "wb") as file:
        write_archive(file, entries)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda data: data[: len(data) - 5],
            "export cut short in the record of entry 2 of 2 ('y')",
        ),
        (lambda data: data[:30], "export cut short"),
        (lambda data: data + b"\x00", "1 bytes after the last of 2 entries"),
        (lambda data: b"NOTANEXP" + data[8:], "not a seqinfer sessions export (bad magic)"),
        (lambda data: data[:8] + b"\x09\x00" + data[10:], "unknown export format version 9"),
        (lambda data: b"SQ", "no header"),
    ],
    ids=["truncated", "truncated-header", "trailing-bytes", "foreign", "version", "tiny"],
)
def test_a_corrupt_export_file_is_refused_whole(tmp_path: Path, damage, message: str):
    path = _archive(tmp_path, [("x", _record("x").encode()), ("y", _record("y").encode())])
    path.write_bytes(damage(path.read_bytes()))
    state = tmp_path / "state"
    result = _cli("import", "--state-dir", str(state), str(path))
    assert result.exit_code == 1
    assert message in result.stderr and "nothing imported" in result.stderr
    assert not state.exists()  # refused before the store was touched


def test_import_refuses_each_bad_record_by_name_and_keeps_the_rest(tmp_path: Path):
    good = _record("good").encode()
    flipped = bytearray(_record("flipped").encode())
    flipped[-1] ^= 0x01
    cut = _record("cut").encode()[:-3]
    other = _record("other").encode()  # filed under a key that is not its own
    path = _archive(
        tmp_path,
        [("good", good), ("flipped", bytes(flipped)), ("cut", cut), ("stolen", other)],
    )
    state = tmp_path / "state"
    result = _cli("import", "--state-dir", str(state), str(path))
    assert result.exit_code == 1
    assert "refused session 'flipped': checksum mismatch" in result.stderr
    assert "refused session 'cut': truncated record" in result.stderr
    assert "refused session 'stolen': record is of session 'other'" in result.stderr
    assert "imported 1 sessions, kept 0 stored ones, refused 3" in result.stderr
    assert _rows(state) == {"good": good}


@pytest.mark.parametrize(
    ("policy", "winners"),
    [
        ("newer", {"old": 9, "new": 9}),
        ("always", {"old": 9, "new": 1}),
        ("never", {"old": 1, "new": 9}),
    ],
)
def test_replace_policy_decides_for_keys_already_stored(tmp_path: Path, policy, winners):
    state = tmp_path / "state"
    # Stored: "old" at step 1, "new" at step 9. Imported: the other way round.
    _store(state, [_record("old", step=1), _record("new", step=9)])
    path = _archive(
        tmp_path, [(r.key, r.encode()) for r in (_record("old", step=9), _record("new", step=1))]
    )
    result = _cli("import", "--state-dir", str(state), "--replace", policy, str(path))
    assert result.exit_code == 0, result.output
    steps = {k: SessionRecord.decode(v, k).step for k, v in _rows(state).items()}
    assert steps == winners


def test_newer_breaks_a_step_tie_by_last_use_and_replaces_an_unreadable_record(tmp_path: Path):
    state = tmp_path / "state"
    stored = _record("tie")
    _store(state, [stored], {"bad": b"garbage"})
    later = replace(stored, last_used=stored.last_used + 1)
    path = _archive(tmp_path, [("tie", later.encode()), ("bad", _record("bad").encode())])
    assert _cli("import", "--state-dir", str(state), str(path)).exit_code == 0
    rows = _rows(state)
    assert SessionRecord.decode(rows["tie"], "tie") == later
    assert SessionRecord.decode(rows["bad"], "bad") == _record("bad")


def test_delete_by_id_and_tenant(store: Path):
    result = _cli("delete", "--state-dir", str(store), "--tenant", "alice", "a")
    assert result.exit_code == 0, result.output
    assert ALICE_A.key not in _rows(store)
    # "c" is anonymous: under tenant alice there is no "c", and nothing is deleted for it.
    result = _cli("delete", "--state-dir", str(store), "--tenant", "alice", "c")
    assert result.exit_code == 1
    assert "no stored session 'c' of tenant 'alice'" in result.stderr
    result = _cli("delete", "--state-dir", str(store), "c", "nope")
    assert result.exit_code == 1 and "no stored session 'nope'" in result.stderr
    assert sorted(_rows(store)) == ["b", "junk"]


def test_the_sessions_commands_import_no_torch(store: Path, tmp_path: Path):
    code = (
        "import sys; from seqinfer.cli.main import app\n"
        "try: app(sys.argv[1:])\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    out = str(tmp_path / "x.sqx")
    for args in (["list"], ["export", "--tenant", "alice", "--out", out]):
        subprocess.run(
            [sys.executable, "-c", code, "sessions", *args, "--state-dir", str(store)],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip


# ----------------------------------------------------- through servers --

ENV = {"SEQINFER_TORCH_THREADS": "1"}
SESSIONS = 16
T = 2


def _serve(state_dir: Path) -> ServeProcess:
    args = serve_args("--durability", "snapshot", "--state-dir", str(state_dir))
    return ServeProcess(args, env=ENV)


def _request(i: int, k: int) -> pb.StepRequest:
    x = np.random.default_rng(100 * i + k).standard_normal((T, 64)).astype(np.float32)
    return pb.StepRequest(
        session_id=f"s{i}",
        request_id=f"s{i}-r{k}",
        expected_step=k * T,
        inputs=to_tensor(x),
        model="bench-gru",
        start=k == 0,
    )


def _exports(api: pb_grpc.SeqinferStub) -> dict[str, tuple[int, bytes]]:
    out = {}
    for i in range(SESSIONS):
        reply = api.ExportState(pb.ExportStateRequest(session_id=f"s{i}"), timeout=60)
        out[f"s{i}"] = (reply.session.step, reply.state.data)
    return out


def test_a_store_moved_by_export_and_import_restores_bit_identical(tmp_path: Path):
    first, second, file = tmp_path / "first", tmp_path / "second", tmp_path / "moved.sqx"
    with _serve(first) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)

        def requests() -> Iterator[pb.StepRequest]:
            for k in range(2):
                for i in range(SESSIONS):
                    yield _request(i, k)

        last = {r.response.session_id: r.response for r in api.StreamSteps(requests(), timeout=120)}
        before = _exports(api)
        server.terminate()
        assert server.wait(60) == 0, server.log()[-3000:]

    exported = _cli("export", "--state-dir", str(first), "--out", str(file))
    assert exported.exit_code == 0, exported.output
    imported = _cli("import", "--state-dir", str(second), str(file))
    assert imported.exit_code == 0, imported.output
    assert f"imported {SESSIONS} sessions" in imported.stderr

    with _serve(second) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        assert f"restored {SESSIONS} sessions in" in server.log() and "refused 0" in server.log()
        assert _exports(api) == before
        for i in range(SESSIONS):
            retry = api.Step(_request(i, 1), timeout=60)
            assert retry.replayed and retry.step == 2 * T, f"s{i}"
            assert retry.outputs == last[f"s{i}"].outputs
        # `list` reads the store beside the running server (WAL: neither blocks the other).
        listed = _cli("list", "--state-dir", str(second), "-o", "json")
        assert listed.exit_code == 0, listed.output
        entries = json.loads(listed.stdout)
        assert {e["session_id"]: e["step"] for e in entries} == {
            sid: step for sid, (step, _) in before.items()
        }
        assert all(e["status"] == "ok" and e["model"] == "bench-gru" for e in entries)


# ------------------------------------------------------------ on Redis --


def _redis_args(server: RedisServer, prefix: str = "cli:") -> list[str]:
    return ["--state-store", "redis", "--redis-url", server.url, "--redis-key-prefix", prefix]


def test_every_command_works_on_a_redis_store(
    store: Path,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
):
    pytest.importorskip("redis")
    from seqinfer.service.store_redis import RedisStore

    on_redis = _redis_args(redis_server)
    # SQLite -> Redis: what an operator does to move a server onto a shared store.
    exported = tmp_path / "from-sqlite.sqx"
    assert _cli("export", "--state-dir", str(store), "--out", str(exported)).exit_code == 1
    result = _cli("import", *on_redis, str(exported))
    assert result.exit_code == 0, result.output
    assert "imported 3 sessions, kept 0 stored ones, refused 0" in result.stderr
    raw = RedisStore(redis_server.url, "cli:")
    original = _rows(store)
    del original["junk"]
    assert dict(raw.read_all()) == original, "records byte for byte, keys as in SQLite"
    raw.write([("junk", b"\x00" * 40)])  # and a bad one, as the SQLite store has

    listed = _cli("list", *on_redis)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["a"] == ["alice", "a", "m:1", "6", "64", "2023-11-14T22:15:06Z", "ok"]
    assert " ".join(rows["junk"]).endswith("refused: not a seqinfer session record (bad magic)")
    assert list(rows) == sorted(rows), "listed by key, as SQLite lists"

    # Redis -> file -> another prefix, with the replace policy applied.
    back = tmp_path / "from-redis.sqx"
    result = _cli("export", *on_redis, "--out", str(back), "--tenant", "")
    assert result.exit_code == 1 and "skipped session 'junk'" in result.stderr
    assert sorted(k for k, _ in read_archive(back.read_bytes())) == ["b", "c"]
    other = _redis_args(redis_server, "other:")
    RedisStore(redis_server.url, "other:").write([(ANON_C.key, _record("c", step=9).encode())])
    result = _cli("import", *other, str(back))
    assert result.exit_code == 0, result.output
    assert "imported 1 sessions, kept 1 stored ones" in result.stderr
    assert SessionRecord.decode(raw.read(["c"])["c"], "c").step == 8
    moved = RedisStore(redis_server.url, "other:")
    assert SessionRecord.decode(moved.read(["c"])["c"], "c").step == 9  # newer kept

    result = _cli("delete", *on_redis, "--tenant", "alice", "a", "nope")
    assert result.exit_code == 1 and "no stored session 'nope' of tenant 'alice'" in result.stderr
    assert sorted(dict(raw.read_all())) == ["b", "c", "junk"]
    assert sorted(dict(moved.read_all())) == ["b", "c"], "another prefix untouched"
    raw.close()
    moved.close()


def test_an_unreachable_redis_or_a_missing_state_dir_is_said(tmp_path: Path):
    from tests.serve_process import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    pytest.importorskip("redis")
    for args in (["list"], ["delete", "x"], ["export", "--out", str(tmp_path / "x.sqx")]):
        result = _cli(*args, "--state-store", "redis", "--redis-url", url)
        assert result.exit_code == 1, result.output
        assert f"error: redis at {url}" in result.stderr
    assert not (tmp_path / "x.sqx").exists()
    result = _cli("list")  # sqlite, the default, and no --state-dir
    assert result.exit_code == 2
    assert "--state-dir is required with --state-store sqlite" in result.output
