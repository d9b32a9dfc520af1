"""Durability write-through in one process, against a real SQLite file.

Group commit (one store transaction per batch, holding every session of the
batch), replies only after the commit (what the store holds matches what the
client was told), and a failing store: replies withheld as
STORE_UNAVAILABLE, the step not replayed until its state is committed, other
sessions undisturbed.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.observer import Observer
from seqinfer.service.records import SessionRecord
from seqinfer.service.store import SqliteStore, StoreWrite
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    gated,
    reference_run,
    running_server,
    status_reason,
    stub,
    to_tensor,
)

MODEL = bench_gru()
T = 3


def _inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, MODEL.spec.input_size)).astype("f4")


def _step(sid: str, k: int, **extra: Any) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid,
        inputs=to_tensor(_inputs(zlib.crc32(f"{sid}-{k}".encode()))),
        request_id=f"{sid}-{k}",
        expected_step=k * T,
        start=k == 0,
        model="bench-gru",
        **extra,
    )


class CountingStore:
    """The real store, with each write's record count kept and failure on demand."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.writes: list[int] = []
        self.failing = threading.Event()
        self._lock = threading.Lock()

    def write(self, records: Any, deletes: Any = ()) -> None:
        if self.failing.is_set():
            raise OSError("disk I/O error (injected)")
        records = list(records)
        self.store.write(records, deletes)
        with self._lock:
            self.writes.append(len(records))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _server(tmp_path: Path) -> Any:
    return running_server(
        [MODEL],
        durability="write-through",
        state_dir=tmp_path,
        snapshot_interval_seconds=0,
        max_batch_size=64,
    )


def _wrap_store(server: Any) -> CountingStore:
    durability = server.server._durability
    counting = CountingStore(durability.store)
    durability.store = counting
    return counting


def _stored(tmp_path: Path) -> dict[str, SessionRecord]:
    reader = SqliteStore(tmp_path)
    try:
        return {key: SessionRecord.decode(data, key) for key, data in reader.read_all()}
    finally:
        reader.close()


def test_one_commit_per_batch_holding_every_session_of_it(tmp_path: Path) -> None:
    with _server(tmp_path) as server:
        counting = _wrap_store(server)
        with gated(server) as gate, stub(server.address) as api:
            gate.open()  # nothing held: the gate only records each batch's size
            reply = api.StepMany(
                pb.StepManyRequest(steps=[_step(f"s{i}", 0) for i in range(40)]), timeout=60
            )
            assert all(r.WhichOneof("outcome") == "response" for r in reply.results)
            api.StepMany(
                pb.StepManyRequest(steps=[_step(f"s{i}", 1) for i in range(40)]), timeout=60
            )
        assert counting.writes == gate.sizes, "one store write per batch, of the batch's size"
        assert sum(counting.writes) == 80 and len(counting.writes) < 80
    stored = _stored(tmp_path)
    assert sorted(stored) == sorted(f"s{i}" for i in range(40))


def test_what_the_store_holds_is_what_the_client_was_told(tmp_path: Path) -> None:
    with _server(tmp_path) as server, stub(server.address) as api:
        replies = [api.Step(_step("a", k, return_state=True), timeout=60) for k in range(4)]
        # Read while the server runs: the reply was sent after the commit.
        record = _stored(tmp_path)["a"]
        assert record.step == replies[-1].step == 4 * T
        assert record.state.data == replies[-1].state.data
        assert record.replay is not None and record.replay.request_id == "a-3"
        inputs = np.concatenate([_inputs(zlib.crc32(f"a-{k}".encode())) for k in range(4)])
        _, final = reference_run(MODEL, inputs)
        state = np.frombuffer(record.state.data, dtype="<f4").reshape(final.shape)
        np.testing.assert_allclose(state, final, rtol=1e-5, atol=1e-5)


def test_a_failed_commit_withholds_the_reply_until_the_state_is_committed(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as server, stub(server.address) as api:
        counting = _wrap_store(server)
        api.Step(_step("a", 0), timeout=60)
        api.Step(_step("b", 0), timeout=60)
        counting.failing.set()
        with pytest.raises(grpc.RpcError) as failed:
            api.Step(_step("a", 1), timeout=60)
        code, reason, _ = error_reason(failed.value)
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        counting.failing.clear()
        # Applied in memory but not in the store: a retry is not answered as kept.
        with pytest.raises(grpc.RpcError) as retried:
            api.Step(_step("a", 1), timeout=60)
        assert error_reason(retried.value)[1] == "STORE_UNAVAILABLE"
        assert _stored(tmp_path)["a"].step == T
        # Another session is not disturbed, and its commit does not cover "a".
        assert api.Step(_step("b", 1), timeout=60).step == 2 * T
        # The periodic pass writes every session whose marker is behind.
        durability = server.server._durability
        server.call(durability.snapshot(full=False))
        assert _stored(tmp_path)["a"].step == 2 * T
        replay = api.Step(_step("a", 1), timeout=60)
        assert replay.replayed and replay.step == 2 * T
        assert api.Step(_step("a", 2), timeout=60).step == 3 * T


def test_a_step_that_ends_its_session_deletes_it_in_the_same_commit(tmp_path: Path) -> None:
    with _server(tmp_path) as server, stub(server.address) as api:
        api.Step(_step("a", 0), timeout=60)
        api.Step(_step("gone", 0), timeout=60)
        assert sorted(_stored(tmp_path)) == ["a", "gone"]
        assert api.Step(_step("gone", 1, end=True), timeout=60).closed
        assert sorted(_stored(tmp_path)) == ["a"]


class RejectionsSeen(Observer):
    def __init__(self) -> None:
        self.rejected: list[str] = []

    def request_rejected(self, model: str, reason: str) -> None:
        self.rejected.append(reason)


def _revision(tmp_path: Path, key: str) -> int:
    reader = SqliteStore(tmp_path)
    try:
        return reader.revisions([key])[key]
    finally:
        reader.close()


def test_a_write_the_store_refuses_as_stale_is_refused_to_its_caller_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = RejectionsSeen()
    with (
        running_server(
            [MODEL],
            observer=seen,
            durability="write-through",
            state_dir=tmp_path,
            snapshot_interval_seconds=0,
        ) as server,
        stub(server.address) as api,
    ):
        api.StepMany(pb.StepManyRequest(steps=[_step("a", 0), _step("b", 0)]), timeout=60)
        first = _revision(tmp_path, "a")
        # Another writer puts a newer revision of "a" into the store.
        other = SqliteStore(tmp_path)
        held = other.read(["a"])["a"]
        assert other.write([StoreWrite("a", first + 10**12, held)]) == []
        other.close()
        reply = api.StepMany(pb.StepManyRequest(steps=[_step("a", 1), _step("b", 1)]), timeout=60)
        refused, kept = reply.results
        assert kept.response.step == 2 * T
        assert refused.WhichOneof("outcome") == "error"
        assert status_reason(refused.error)[:2] == (
            grpc.StatusCode.UNAVAILABLE.value[0],
            "STORE_UNAVAILABLE",
        )
        assert "newer revision" in refused.error.message
        stored = _stored(tmp_path)
        assert (
            stored["a"].step == T
            and stored["a"].state.data == SessionRecord.decode(held, "a").state.data
        ), "the newer writer's record stands"
        assert stored["b"].step == 2 * T
        assert seen.rejected.count("stale") == 1
        assert server.server._durability.refused == 1
        assert any("refused 1 of 2 writes as stale" in r.getMessage() for r in caplog.records)
        # Not kept here, so its retry is not answered as kept either.
        with pytest.raises(grpc.RpcError) as retried:
            api.Step(_step("a", 1), timeout=60)
        assert error_reason(retried.value)[1] == "STORE_UNAVAILABLE"


def test_revisions_grow_where_the_counter_goes_down(tmp_path: Path) -> None:
    """A reset step and a session closed and created again under its id: their
    counters go down, their revisions up, so the store takes their writes."""
    with _server(tmp_path) as server, stub(server.address) as api:
        for k in range(3):
            api.Step(_step("a", k), timeout=60)
        before = _revision(tmp_path, "a")
        assert _stored(tmp_path)["a"].step == 3 * T
        reset = api.Step(
            pb.StepRequest(session_id="a", inputs=to_tensor(_inputs(7)), reset=True), timeout=60
        )
        assert reset.step == T
        assert _stored(tmp_path)["a"].step == T and _revision(tmp_path, "a") > before
        for k in range(1, 3):
            api.Step(_step("a", k), timeout=60)
        # Closed: the store keeps its record until the next periodic pass.
        api.CloseSession(pb.CloseSessionRequest(session_id="a"), timeout=60)
        assert _stored(tmp_path)["a"].step == 3 * T
        again = _revision(tmp_path, "a")
        assert api.Step(_step("a", 0), timeout=60).step == T
        assert _stored(tmp_path)["a"].step == T and _revision(tmp_path, "a") > again
        assert server.server._durability.refused == 0
