"""Snapshot durability with real server processes and a real SQLite file.

A clean SIGTERM loses nothing (states bit-identical, counters, exactly-once
retries across the restart); a SIGKILL loses nothing written by a snapshot
that began after the last step; a bad record is refused by name and the
rest come back. Nothing here waits on time: a snapshot is waited for by the
line the server logs when it completes.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from seqinfer.cli.main import app
from seqinfer.service.records import ArrayRecord, SessionRecord
from seqinfer.service.store import STORE_FILE
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import error_reason, to_tensor

ENV = {"SEQINFER_TORCH_THREADS": "1"}
SESSIONS = 64
ROUNDS = 3
T = 2
SNAPSHOT_LINE = "snapshot: wrote"


def _serve(state_dir: Path, interval: float = 0, *flags: str) -> ServeProcess:
    args = serve_args(
        "--durability",
        "snapshot",
        "--state-dir",
        str(state_dir),
        "--snapshot-interval-seconds",
        str(interval),
        *flags,
    )
    return ServeProcess(args, env=ENV)


def _inputs(sid: int, k: int) -> Any:
    rng = np.random.default_rng(1000 * sid + k)
    return to_tensor(rng.standard_normal((T, 64)).astype(np.float32))


def _request(i: int, k: int) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=f"s{i}",
        request_id=f"s{i}-r{k}",
        expected_step=k * T,
        inputs=_inputs(i, k),
        model="bench-gru",
        start=k == 0,
    )


def _stream_rounds(api: pb_grpc.SeqinferStub, rounds: range) -> dict[str, pb.StepResponse]:
    """Every session stepped ``rounds`` on one stream; each session's last reply."""

    def requests() -> Iterator[pb.StepRequest]:
        for k in rounds:
            for i in range(SESSIONS):
                yield _request(i, k)

    last: dict[str, pb.StepResponse] = {}
    for result in api.StreamSteps(requests(), timeout=120):
        assert result.WhichOneof("outcome") == "response", result
        last[result.response.session_id] = result.response
    assert len(last) == SESSIONS
    return last


def _exports(api: pb_grpc.SeqinferStub, ids: list[str]) -> dict[str, tuple[int, bytes]]:
    out = {}
    for sid in ids:
        reply = api.ExportState(pb.ExportStateRequest(session_id=sid), timeout=60)
        out[sid] = (reply.session.step, reply.state.data)
    return out


def _ids() -> list[str]:
    return [f"s{i}" for i in range(SESSIONS)]


def test_sigterm_restart_keeps_every_session_bit_identical_and_retries_exact(tmp_path: Path):
    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        last = _stream_rounds(api, range(ROUNDS))
        api.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="closed"))
        api.CloseSession(pb.CloseSessionRequest(session_id="closed"), timeout=60)
        before = _exports(api, _ids())
        server.terminate()
        assert server.wait(60) == 0, server.log()[-3000:]
        assert f"snapshot (all): wrote {SESSIONS} sessions" in server.log()
    assert all(step == ROUNDS * T for step, _ in before.values())

    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        assert f"restored {SESSIONS} sessions in" in server.log()
        assert "refused 0" in server.log()
        assert _exports(api, _ids()) == before
        for i in range(SESSIONS):
            retry = api.Step(_request(i, ROUNDS - 1), timeout=60)
            assert retry.replayed, f"s{i}"
            assert retry.step == ROUNDS * T
            assert retry.outputs == last[f"s{i}"].outputs
        # Retries replayed, nothing applied twice; the next step goes on from the counter.
        assert _exports(api, _ids()) == before
        assert _stream_rounds(api, range(ROUNDS, ROUNDS + 1))["s0"].step == (ROUNDS + 1) * T
        with pytest.raises(grpc.RpcError) as info:
            api.GetSession(pb.GetSessionRequest(session_id="closed"), timeout=60)
        assert error_reason(info.value)[1] == "SESSION_NOT_FOUND"


def _snapshots(server: ServeProcess) -> int:
    return server.log().count(SNAPSHOT_LINE)


def test_sigkill_loses_nothing_written_by_a_snapshot_after_the_last_step(tmp_path: Path):
    with (
        _serve(tmp_path, 0.05, "--log-level", "DEBUG") as server,
        grpc.insecure_channel(server.address()) as channel,
    ):
        api = pb_grpc.SeqinferStub(channel)
        _stream_rounds(api, range(ROUNDS))
        # The first snapshot to complete may have begun before the last step;
        # the second began after the first ended, so after every step above.
        seen = _snapshots(server)
        server.wait_for(lambda: _snapshots(server) >= seen + 2, 60, "two more snapshots")
        before = _exports(api, _ids())
        server.send_signal(signal.SIGKILL)
        assert server.wait(60) == -signal.SIGKILL
        assert "snapshot (all)" not in server.log()

    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        assert f"restored {SESSIONS} sessions in" in server.log()
        assert _exports(api, _ids()) == before


def test_sigkill_without_a_snapshot_restores_nothing(tmp_path: Path):
    """Interval 0: only a clean shutdown writes, so a crash loses the steps since the last one."""
    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        _stream_rounds(pb_grpc.SeqinferStub(channel), range(1))
        server.send_signal(signal.SIGKILL)
        server.wait(60)
    with _serve(tmp_path) as server:
        server.address()
        assert "restored 0 sessions in" in server.log()


def _rewrite(state_dir: Path, session_id: str, data: bytes) -> None:
    with sqlite3.connect(state_dir / STORE_FILE) as db:
        db.execute("UPDATE sessions SET record = ? WHERE session_id = ?", (data, session_id))


def _record(state_dir: Path, session_id: str) -> bytes:
    with sqlite3.connect(state_dir / STORE_FILE) as db:
        row = db.execute("SELECT record FROM sessions WHERE session_id = ?", (session_id,))
        return bytes(row.fetchone()[0])


def test_bad_records_are_refused_by_name_and_the_rest_restored(tmp_path: Path):
    ids = ["good-1", "good-2", "truncated", "bad-checksum", "wrong-model", "wrong-shape"]
    ids += ["foreign-bytes", "misfiled"]
    x = to_tensor(np.ones((3, 64), np.float32))
    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        for sid in ids:
            api.Step(pb.StepRequest(session_id=sid, start=True, model="bench-gru", inputs=x))
        before = _exports(api, ["good-1", "good-2"])
        server.terminate()
        assert server.wait(60) == 0, server.log()[-3000:]

    data = _record(tmp_path, "truncated")
    _rewrite(tmp_path, "truncated", data[: len(data) // 2])
    flipped = bytearray(_record(tmp_path, "bad-checksum"))
    flipped[-1] ^= 0x40
    _rewrite(tmp_path, "bad-checksum", bytes(flipped))
    # Well-formed, correctly checksummed records that do not fit the served model.
    record = SessionRecord.decode(_record(tmp_path, "wrong-model"), "wrong-model")
    _rewrite(tmp_path, "wrong-model", replace(record, model="no-such-model").encode())
    record = SessionRecord.decode(_record(tmp_path, "wrong-shape"), "wrong-shape")
    state = record.state
    half = ArrayRecord(state.dtype, (2, 128), state.data[: len(state.data) // 2])
    _rewrite(tmp_path, "wrong-shape", replace(record, state=half).encode())
    # Bytes that were never a record (another program's blob), and a whole,
    # valid record filed under another session's key.
    _rewrite(tmp_path, "foreign-bytes", b"PK\x03\x04" + bytes(range(256)) * 4)
    _rewrite(tmp_path, "misfiled", _record(tmp_path, "good-2"))
    # The operator's view agrees on what cannot be decoded; fitting a model is the server's call.
    listed = CliRunner().invoke(app, ["sessions", "list", "--state-dir", str(tmp_path)])
    status = {line.split()[1]: line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    refused = {"truncated", "bad-checksum", "foreign-bytes", "misfiled"}
    assert {sid for sid, word in status.items() if word != "ok"} == refused, listed.stdout

    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        log = server.log()
        assert "restored 2 sessions in" in log and "refused 6" in log
        assert "session 'truncated': truncated record" in log
        assert "session 'bad-checksum': checksum mismatch" in log
        assert "session 'wrong-model': model no-such-model:" in log
        assert "session 'wrong-shape': state shape [2, 128] does not match" in log
        assert "session 'foreign-bytes': not a seqinfer session record (bad magic)" in log
        assert "session 'misfiled': record is of session 'good-2'" in log
        assert _exports(api, ["good-1", "good-2"]) == before
        reply = api.Step(pb.StepRequest(session_id="good-1", inputs=x), timeout=60)
        assert reply.step == 6
        for lost in ids[2:]:
            with pytest.raises(grpc.RpcError) as info:
                api.GetSession(pb.GetSessionRequest(session_id=lost), timeout=60)
            assert error_reason(info.value)[1] == "SESSION_NOT_FOUND", lost


def test_sessions_of_two_tenants_with_one_id_come_back_each_to_its_tenant(tmp_path: Path):
    from seqinfer.service.tenants import new_token, token_hash

    alice, bob = new_token(), new_token()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(alice)} alice\n{token_hash(bob)} bob\n")
    env = {**ENV, "SEQINFER_AUTH_TOKEN_FILE": str(tokens)}
    args = serve_args("--durability", "snapshot", "--state-dir", str(tmp_path / "state"))

    def as_(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    exported: dict[str, bytes] = {}
    with ServeProcess(args, env=env) as server, grpc.insecure_channel(server.address()) as ch:
        api = pb_grpc.SeqinferStub(ch)
        for k, token in enumerate((alice, bob)):
            api.OpenSession(
                pb.OpenSessionRequest(model="bench-gru", session_id="same"), metadata=as_(token)
            )
            for j in range(k + 1):  # alice steps once, bob twice
                api.Step(
                    pb.StepRequest(session_id="same", inputs=_inputs(k, j)), metadata=as_(token)
                )
            state = api.ExportState(pb.ExportStateRequest(session_id="same"), metadata=as_(token))
            exported[token] = state.state.data
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    assert exported[alice] != exported[bob]
    with ServeProcess(args, env=env) as server, grpc.insecure_channel(server.address()) as ch:
        api = pb_grpc.SeqinferStub(ch)
        for steps, token in ((T, alice), (2 * T, bob)):
            got = api.ExportState(pb.ExportStateRequest(session_id="same"), metadata=as_(token))
            assert (got.session.step, got.state.data) == (steps, exported[token])
