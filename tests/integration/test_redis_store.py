"""The server keeping its sessions in a real redis-server (state_store: redis).

Write-through on Redis: a stop and restart brings every session back
bit-identical; Redis taken away mid-run withholds replies as
STORE_UNAVAILABLE, and once it is back (append-only, so what it held
survives) the server serves again and loses nothing it acknowledged.
Snapshot mode: what a graceful stop writes is what the next start serves.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.records import SessionRecord
from seqinfer.service.store import StoreUnavailable
from seqinfer.service.store_redis import RedisStore
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.redis_server import RedisServer
from tests.support import error_reason, reference_run, running_server, stub, to_tensor

pytest.importorskip("redis")

MODEL = bench_gru()
T = 3
PREFIX = "it:"


def _inputs(sid: str, k: int) -> np.ndarray:
    seed = zlib.crc32(f"{sid}-{k}".encode())
    return np.random.default_rng(seed).standard_normal((T, MODEL.spec.input_size)).astype("f4")


def _step(sid: str, k: int, **extra: Any) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid,
        inputs=to_tensor(_inputs(sid, k)),
        request_id=f"{sid}-{k}",
        expected_step=k * T,
        start=k == 0,
        model="bench-gru",
        **extra,
    )


def _server(redis: RedisServer, durability: str) -> Any:
    return running_server(
        [MODEL],
        durability=durability,
        state_store="redis",
        redis_url=redis.url,
        redis_key_prefix=PREFIX,
        snapshot_interval_seconds=0,
    )


def _stored(redis: RedisServer) -> dict[str, SessionRecord]:
    reader = RedisStore(redis.url, PREFIX)
    try:
        return {key: SessionRecord.decode(data, key) for key, data in reader.read_all()}
    finally:
        reader.close()


def _expect_reference(sid: str, steps: int, state: bytes) -> None:
    inputs = np.concatenate([_inputs(sid, k) for k in range(steps)])
    _, final = reference_run(MODEL, inputs)
    got = np.frombuffer(state, dtype="<f4").reshape(final.shape)
    np.testing.assert_allclose(got, final, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("durability", ["write-through", "snapshot"])
def test_a_restart_brings_every_session_back_bit_identical(tmp_path: Path, durability: str) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        sessions = [f"s{i}" for i in range(8)]
        with _server(redis, durability) as server, stub(server.address) as api:
            for k in range(2):
                for sid in sessions:
                    api.Step(_step(sid, k), timeout=60)
        before = _stored(redis)
        assert sorted(before) == sessions and all(r.step == 2 * T for r in before.values())
        with _server(redis, durability) as server, stub(server.address) as api:
            for sid in sessions:
                reply = api.Step(_step(sid, 2, return_state=True), timeout=60)
                assert reply.step == 3 * T
                _expect_reference(sid, 3, reply.state.data)
        # Restored bit for bit: the first step after restart ran on exactly the stored state.
        after = _stored(redis)
        assert all(after[sid].step == 3 * T for sid in sessions)
    finally:
        redis.stop()


def test_redis_down_mid_run_is_store_unavailable_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    try:
        with _server(redis, "write-through") as server, stub(server.address) as api:
            api.Step(_step("a", 0), timeout=60)
            api.Step(_step("b", 0), timeout=60)
            redis.stop()
            with pytest.raises(grpc.RpcError) as failed:
                api.Step(_step("a", 1), timeout=60)
            code, reason, _ = error_reason(failed.value)
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
            redis.start()  # same port and directory: the append-only file keeps a and b
            held = _stored(redis)
            assert held["a"].step == T and held["b"].step == T
            # Serving again: another session commits, and so does a's retry once
            # the periodic pass has put its applied state in the store.
            assert api.Step(_step("b", 1), timeout=60).step == 2 * T
            server.call(server.server._durability.snapshot(full=False))
            replay = api.Step(_step("a", 1), timeout=60)
            assert replay.replayed and replay.step == 2 * T
            final = api.Step(_step("a", 2, return_state=True), timeout=60)
            _expect_reference("a", 3, final.state.data)
        assert {k: r.step for k, r in _stored(redis).items()} == {"a": 3 * T, "b": 2 * T}
    finally:
        redis.stop()


def test_the_server_refuses_to_start_with_redis_down(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")  # never started
    with pytest.raises(StoreUnavailable, match=f"redis at {redis.url}"):
        with _server(redis, "write-through"):
            pass
