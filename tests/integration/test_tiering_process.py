"""Tiering and lazy restore with real server processes and a real SQLite file.

A restart with ``restore: lazy`` serves sessions that were spilled or on the
device alike: each one's next step equals torch.nn.GRU over its whole
sequence, counters go on, a retry of its last request is replayed; a record
damaged while the server was down is met on first use, refused by name, and
the server goes on. And memory: the process's resident set grows with the
slab, not with the sessions kept in the store.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.store import STORE_FILE
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import error_reason, from_tensor, reference_run, to_tensor

ENV = {"SEQINFER_TORCH_THREADS": "1"}
MODEL = bench_gru()
DEVICE = 16
SESSIONS = 10 * DEVICE
ROUNDS = 2
T = 2


def _serve(state_dir: Path, *flags: str) -> ServeProcess:
    args = serve_args(
        "--durability",
        "write-through",
        "--state-dir",
        str(state_dir),
        "--snapshot-interval-seconds",
        "0",
        "--device-sessions",
        str(DEVICE),
        *flags,
    )
    return ServeProcess(args, env=ENV)


def _inputs(sid: str, k: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{sid}/{k}".encode()))
    return rng.standard_normal((T, 64)).astype(np.float32)


def _request(sid: str, k: int) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid,
        request_id=f"{sid}-r{k}",
        expected_step=k * T,
        inputs=to_tensor(_inputs(sid, k)),
        model="bench-gru",
        start=k == 0,
        output_mode=pb.OUTPUT_MODE_ALL,
    )


def _expected(sid: str, rounds: int) -> np.ndarray:
    outputs, _ = reference_run(MODEL, np.concatenate([_inputs(sid, k) for k in range(rounds)]))
    return outputs


def _damage(state_dir: Path, sid: str) -> None:
    """Flip a bit in the record's last byte (its state or cached reply): the header reads
    fine, the checksum does not match."""
    with sqlite3.connect(state_dir / STORE_FILE) as db:
        (data,) = db.execute("SELECT record FROM sessions WHERE session_id = ?", (sid,)).fetchone()
        data = bytearray(data)
        data[-1] ^= 0x40
        db.execute("UPDATE sessions SET record = ? WHERE session_id = ?", (bytes(data), sid))


def test_lazy_restart_serves_every_session_exactly(tmp_path: Path):
    ids = [f"s{i}" for i in range(SESSIONS)]
    order = [(sid, k) for k in range(ROUNDS) for sid in ids]
    random.Random(3).shuffle(order)
    order.sort(key=lambda pair: pair[1])  # each session's rounds in order, sessions shuffled
    last: dict[str, pb.StepResponse] = {}
    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        for sid, k in order:
            last[sid] = api.Step(_request(sid, k), timeout=60)
        server.terminate()
        assert server.wait(60) == 0, server.log()[-3000:]
    damaged = ids[5]
    _damage(tmp_path, damaged)

    with (
        _serve(tmp_path, "--restore", "lazy") as server,
        grpc.insecure_channel(server.address()) as channel,
    ):
        api = pb_grpc.SeqinferStub(channel)
        log = server.log()
        assert f"restored {SESSIONS} sessions lazily" in log and "refused 0" in log, log[-2000:]
        survivors = [sid for sid in ids if sid != damaged]
        random.Random(4).shuffle(survivors)
        for sid in survivors[: SESSIONS // 2]:
            # The last request retried: replayed from the record, nothing applied twice.
            retry = api.Step(_request(sid, ROUNDS - 1), timeout=60)
            assert retry.replayed and retry.step == ROUNDS * T, sid
            assert retry.outputs == last[sid].outputs, sid
        for sid in survivors:
            reply = api.Step(_request(sid, ROUNDS), timeout=60)
            assert not reply.replayed and reply.step == (ROUNDS + 1) * T, sid
            np.testing.assert_allclose(
                from_tensor(reply.outputs),
                _expected(sid, ROUNDS + 1)[ROUNDS * T :],
                rtol=1e-4,
                atol=1e-5,
                err_msg=sid,
            )
        with pytest.raises(grpc.RpcError) as lost:
            api.Step(_request(damaged, ROUNDS), timeout=60)
        code, reason, _ = error_reason(lost.value)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        assert f"'{damaged}'" in lost.value.details()
        assert "checksum mismatch" in lost.value.details()
        # Still serving; the refused session is gone, and named in the log.
        assert api.Step(_request(survivors[0], ROUNDS + 1), timeout=60).step == (ROUNDS + 2) * T
        with pytest.raises(grpc.RpcError) as gone:
            api.GetSession(pb.GetSessionRequest(session_id=damaged), timeout=60)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.log()[-3000:]
        assert f"session not restored: session '{damaged}': checksum mismatch" in server.log()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


LARGE_STATE = 2 * 1024 * 4  # bench-gru-large: 2 layers x 1024 float32


def _open_many(api: Any, first: int, count: int) -> None:
    """``count`` new sessions of bench-gru-large, one step each, 64 per StepMany."""
    x = np.zeros((1, 256), np.float32)
    for at in range(first, first + count, 64):
        n = min(64, first + count - at)
        steps = [
            pb.StepRequest(
                session_id=f"m{i}",
                start=True,
                model="bench-gru-large",
                inputs=to_tensor(x),
                output_mode=pb.OUTPUT_MODE_NONE,
            )
            for i in range(at, at + n)
        ]
        reply = api.StepMany(pb.StepManyRequest(steps=steps), timeout=120)
        assert all(r.WhichOneof("outcome") == "response" for r in reply.results), reply


def test_resident_memory_grows_with_the_slab_not_the_sessions_in_the_store(tmp_path: Path):
    with (
        _serve(tmp_path, "--device-sessions", "64") as server,
        grpc.insecure_channel(server.address()) as channel,
    ):
        api = pb_grpc.SeqinferStub(channel)
        # Warm up: slab at its bound, spills and restores run, the store's caches filled.
        _open_many(api, 0, 640)
        before = _rss_bytes(server.pid)
        _open_many(api, 640, 2560)
        grown = _rss_bytes(server.pid) - before
        # On the device those 2560 sessions would hold 20 MiB of state alone; in the
        # store each costs its bookkeeping only (about 1 KiB).
        on_device = 2560 * LARGE_STATE
        assert grown < on_device // 3, f"RSS grew {grown} bytes for 2560 sessions in the store"
        info = api.GetModel(pb.GetModelRequest(name="bench-gru-large"), timeout=60)
        assert info.open_sessions == 3200
