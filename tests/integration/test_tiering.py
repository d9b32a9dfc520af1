"""Tiering in one process, against a real SQLite file: ten times more sessions than
device slots, stepped in random order, every output equal to torch.nn.GRU over the
session's whole sequence; the slab never above ``device_sessions``; exactly-once
across spill and restore; a store that fails during a restore loses nothing; a
corrupt record met on restore is refused by name and the server goes on.
"""

from __future__ import annotations

import random
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.metrics import PrometheusObserver
from seqinfer.service.sessions import IN_STORE
from seqinfer.service.store import SqliteStore
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    from_tensor,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
)

MODEL = make_model(input_size=4, hidden=16, layers=2, output=3)
DEVICE = 8
SESSIONS = 10 * DEVICE
STEPS = 4  # requests per session


def _inputs(sid: str, k: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{sid}/{k}".encode()))
    t = 1 + k % 3
    return rng.standard_normal((t, MODEL.spec.input_size)).astype("f4")


def _request(sid: str, k: int, step: int) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid,
        inputs=to_tensor(_inputs(sid, k)),
        request_id=f"{sid}-{k}",
        expected_step=step,
        start=k == 0,
        model=MODEL.spec.name,
        output_mode=pb.OUTPUT_MODE_ALL,
    )


def _server(tmp_path: Path, durability: str = "write-through", **extra: Any) -> Any:
    values: dict[str, Any] = {
        "durability": durability,
        "state_dir": tmp_path,
        "snapshot_interval_seconds": 0,
        "device_sessions": DEVICE,
        "initial_capacity": 2,
    }
    values.update(extra)
    return running_server([MODEL], **values)


def _reference(sid: str, upto: int) -> np.ndarray:
    sequence = np.concatenate([_inputs(sid, k) for k in range(upto)])
    outputs, _ = reference_run(MODEL, sequence)
    return outputs


@pytest.mark.parametrize("durability", ["write-through", "snapshot"])
def test_ten_times_more_sessions_than_slots_match_nn_gru(tmp_path: Path, durability: str):
    ids = [f"t{i}" for i in range(SESSIONS)]
    order = [sid for sid in ids for _ in range(STEPS)]
    random.Random(7).shuffle(order)
    observer = PrometheusObserver()
    with _server(tmp_path, durability, observer=observer) as server, stub(server.address) as api:
        done = dict.fromkeys(ids, 0)
        steps = dict.fromkeys(ids, 0)
        outputs: dict[str, list[np.ndarray]] = {sid: [] for sid in ids}
        lock = threading.Lock()

        def step(sid: str) -> None:
            with lock:  # this session's next request, in order; others run alongside
                k = done[sid]
                done[sid] += 1
            reply = api.Step(_request(sid, k, steps[sid]), timeout=60)
            with lock:
                steps[sid] = reply.step
                outputs[sid].append(from_tensor(reply.outputs))

        # Four callers at once, never two on one session: the steps of a session
        # stay in order, and restores, spills and batches interleave.
        by_session: dict[str, threading.Lock] = {sid: threading.Lock() for sid in ids}

        def guarded(sid: str) -> None:
            with by_session[sid]:
                step(sid)

        with ThreadPoolExecutor(4) as pool:
            for _ in pool.map(guarded, order):
                pass

        for sid in ids:
            got = np.concatenate(outputs[sid])
            np.testing.assert_allclose(got, _reference(sid, STEPS), rtol=1e-4, atol=1e-5)
            assert steps[sid] == sum(len(_inputs(sid, k)) for k in range(STEPS))

        runtime = server.server.runtimes[0]

        def tiers() -> tuple[int, int, int, list[Any]]:
            table = runtime.table
            stored = [s for s in table.by_id.values() if s.slot == IN_STORE]
            return runtime.slab.capacity, table.device_count, len(table), stored

        capacity, on_device, total, stored = server.run_sync(tiers)
        # Capacity only ever grows: at most DEVICE now means at most DEVICE all along.
        assert capacity <= DEVICE and on_device <= DEVICE
        assert total == SESSIONS and len(stored) == SESSIONS - on_device
        # A session in the store keeps no state and no cached reply in memory.
        assert all(s.last_reply is None for s in stored)
        models, _ = observer.totals()
        counters = models[runtime.key]
        assert counters.spilled >= SESSIONS - DEVICE and counters.restored > 0
        assert sum(counters.restore_seconds.counts) == counters.restored

        # Exactly-once across spill and restore: the last request of a session now in
        # the store, retried with its expected_step, is replayed, not applied again.
        sid = stored[0].session_id
        last = STEPS - 1
        before = steps[sid] - len(_inputs(sid, last))
        replay = api.Step(_request(sid, last, before), timeout=60)
        assert replay.replayed and replay.step == steps[sid]
        np.testing.assert_array_equal(from_tensor(replay.outputs), outputs[sid][-1])
        # A gap is still a gap after a restore.
        with pytest.raises(grpc.RpcError) as gap:
            api.Step(_request(sid, STEPS, before), timeout=60)
        assert error_reason(gap.value)[1] == "STEP_GAP"
        # Get answers from the store tier's bookkeeping; Export brings the state back.
        sid = server.run_sync(tiers)[3][0].session_id
        info = api.GetSession(pb.GetSessionRequest(session_id=sid), timeout=60)
        assert info.step == steps[sid]
        exported = api.ExportState(pb.ExportStateRequest(session_id=sid), timeout=60)
        _, state = reference_run(MODEL, np.concatenate([_inputs(sid, k) for k in range(STEPS)]))
        np.testing.assert_allclose(from_tensor(exported.state), state, rtol=1e-4, atol=1e-5)


def test_max_sessions_counts_both_tiers(tmp_path: Path):
    with _server(tmp_path, max_sessions=2 * DEVICE) as server, stub(server.address) as api:
        for i in range(2 * DEVICE):
            api.Step(_request(f"m{i}", 0, 0), timeout=60)
        with pytest.raises(grpc.RpcError) as full:
            api.Step(_request("one-more", 0, 0), timeout=60)
        assert error_reason(full.value)[1] == "CAPACITY_FULL"
        # Closing a session in the store makes room, and the new one steps.
        api.CloseSession(pb.CloseSessionRequest(session_id="m0"), timeout=60)
        assert api.Step(_request("one-more", 0, 0), timeout=60).step == 1


class FlakyReads:
    """The real store, whose reads fail while ``failing`` is set."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.failing = threading.Event()

    def read(self, keys: Any) -> dict[str, bytes]:
        if self.failing.is_set():
            raise OSError("disk I/O error (injected)")
        return self.store.read(keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_store_failing_during_a_restore_refuses_the_step_and_loses_nothing(tmp_path: Path):
    with _server(tmp_path) as server, stub(server.address) as api:
        durability = server.server._durability
        flaky = FlakyReads(durability.store)
        durability.store = flaky
        for i in range(DEVICE + 1):  # the first one is spilled to make room for the last
            api.Step(_request(f"f{i}", 0, 0), timeout=60)
        runtime = server.server.runtimes[0]
        assert server.run_sync(lambda: runtime.table.get("f0").slot) == IN_STORE
        flaky.failing.set()
        with pytest.raises(grpc.RpcError) as failed:
            api.Step(_request("f0", 1, 1), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(failed.value)[1] == "STORE_UNAVAILABLE"
        flaky.failing.clear()
        # Nothing was applied: the same step goes through, with the session's whole history.
        reply = api.Step(_request("f0", 1, 1), timeout=60)
        assert reply.step == 1 + len(_inputs("f0", 1)) and not reply.replayed
        np.testing.assert_allclose(
            from_tensor(reply.outputs), _reference("f0", 2)[1:], rtol=1e-4, atol=1e-5
        )


def test_a_corrupt_record_met_on_restore_is_refused_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with _server(tmp_path) as server, stub(server.address) as api:
        for i in range(DEVICE + 1):
            api.Step(_request(f"c{i}", 0, 0), timeout=60)
        store = server.server._durability.store
        data = bytearray(store.read(["c0"])["c0"])
        data[-1] ^= 0xFF  # a flipped bit in the state: the checksum no longer matches
        store.write([("c0", bytes(data))])
        with pytest.raises(grpc.RpcError) as lost:
            api.Step(_request("c0", 1, 1), timeout=60)
        code, reason, _ = error_reason(lost.value)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        assert "'c0'" in lost.value.details() and "checksum" in lost.value.details()
        assert any("c0" in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
        # The server goes on: the others still step, the refused id is gone.
        assert api.Step(_request("c1", 1, 1), timeout=60).step > 1
        with pytest.raises(grpc.RpcError) as gone:
            api.GetSession(pb.GetSessionRequest(session_id="c0"), timeout=60)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_lazy_restore_without_a_device_bound_restores_on_first_use(tmp_path: Path):
    ids = [f"z{i}" for i in range(12)]
    with _server(tmp_path, "snapshot", device_sessions=0) as server, stub(server.address) as api:
        for sid in ids:
            api.Step(_request(sid, 0, 0), timeout=60)
    observer = PrometheusObserver()
    with (
        _server(
            tmp_path, "snapshot", device_sessions=0, restore="lazy", observer=observer
        ) as server,
        stub(server.address) as api,
    ):
        runtime = server.server.runtimes[0]
        stats = server.run_sync(runtime.stats)
        assert stats.sessions_by_tier == {"device": 0, "store": len(ids)}
        first = len(_inputs(ids[0], 0))
        reply = api.Step(_request(ids[0], 1, first), timeout=60)
        np.testing.assert_allclose(
            from_tensor(reply.outputs), _reference(ids[0], 2)[first:], rtol=1e-4, atol=1e-5
        )
        stats = server.run_sync(runtime.stats)
        assert stats.sessions_by_tier == {"device": 1, "store": len(ids) - 1}
        models, _ = observer.totals()
        assert models[runtime.key].restored == 1


def test_tiers_need_durability():
    from seqinfer.service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="need durability"):
        load_settings(device_sessions=8)
    with pytest.raises(ConfigError, match="need durability"):
        load_settings(restore="lazy")


def test_fork_and_import_of_a_session_in_the_store(tmp_path: Path):
    with _server(tmp_path) as server, stub(server.address) as api:
        for i in range(DEVICE + 1):  # k0 is spilled to make room for the last
            api.Step(_request(f"k{i}", 0, 0), timeout=60)
        runtime = server.server.runtimes[0]
        assert server.run_sync(lambda: runtime.table.get("k0").slot) == IN_STORE
        fork = api.ForkSession(
            pb.ForkSessionRequest(session_id="k0", new_session_id="k0-fork"), timeout=60
        )
        first = len(_inputs("k0", 0))
        assert fork.step == first
        # The fork goes on from the source's state: its next step is the source's would-be one.
        reply = api.Step(
            pb.StepRequest(
                session_id="k0-fork",
                inputs=to_tensor(_inputs("k0", 1)),
                output_mode=pb.OUTPUT_MODE_ALL,
            ),
            timeout=60,
        )
        np.testing.assert_allclose(
            from_tensor(reply.outputs), _reference("k0", 2)[first:], rtol=1e-4, atol=1e-5
        )
        # Import over a session in the store: its state replaced, the counter set.
        spilled = server.run_sync(
            lambda: next(s.session_id for s in runtime.table.by_id.values() if s.slot == IN_STORE)
        )
        state = np.full((MODEL.spec.num_layers, MODEL.spec.hidden_size), 0.25, np.float32)
        api.ImportState(
            pb.ImportStateRequest(session_id=spilled, state=to_tensor(state), step=7), timeout=60
        )
        exported = api.ExportState(pb.ExportStateRequest(session_id=spilled), timeout=60)
        assert exported.session.step == 7
        np.testing.assert_array_equal(from_tensor(exported.state), state)
