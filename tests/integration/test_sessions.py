"""Session lifecycle over real gRPC: open/get/close, fork, export/import, reset, end,
expected_step retries, idle TTL, max sessions, health and reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    from_tensor,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", layers=2, name="m", seed=5)


@pytest.fixture(scope="module")
def server():
    with running_server([MODEL], idle_ttl_seconds=0) as srv:
        yield srv


@pytest.fixture
def api(server):
    with stub(server.address) as s:
        yield s


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def _step(api, sid: str, x: np.ndarray, **kw) -> pb.StepResponse:
    return api.Step(pb.StepRequest(session_id=sid, inputs=to_tensor(x), **kw))


def _expect(call, code, reason):
    with pytest.raises(grpc.RpcError) as info:
        call()
    got_code, got_reason, metadata = error_reason(info.value)
    assert (got_code, got_reason) == (code, reason), info.value.details()
    return info.value, metadata


def test_open_get_close(api):
    info = api.OpenSession(pb.OpenSessionRequest(model="m", session_id="life", idle_ttl_seconds=60))
    assert (info.session_id, info.model, info.step, info.idle_ttl_seconds) == ("life", "m", 0, 60)
    assert info.tier == pb.STATE_TIER_DEVICE and info.created_at.seconds > 0
    _step(api, "life", _x(3))
    assert api.GetSession(pb.GetSessionRequest(session_id="life")).step == 3
    assert api.CloseSession(pb.CloseSessionRequest(session_id="life")).final_step == 3
    _expect(
        lambda: api.GetSession(pb.GetSessionRequest(session_id="life")),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    _expect(
        lambda: api.OpenSession(pb.OpenSessionRequest(model="nope")),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )


def test_server_issues_unique_ids_and_refuses_duplicates(api):
    a = api.OpenSession(pb.OpenSessionRequest(model="m")).session_id
    b = api.OpenSession(pb.OpenSessionRequest(model="m")).session_id
    assert a != b and len(a) >= 32
    _expect(
        lambda: api.OpenSession(pb.OpenSessionRequest(model="m", session_id=a)),
        grpc.StatusCode.ALREADY_EXISTS,
        "SESSION_EXISTS",
    )


def test_initial_state_fork_export_import_round_trip(api):
    h0 = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    api.OpenSession(pb.OpenSessionRequest(model="m", session_id="src", initial_state=to_tensor(h0)))
    x1, x2 = _x(4, 1), _x(3, 2)
    _step(api, "src", x1)
    fork = api.ForkSession(pb.ForkSessionRequest(session_id="src", new_session_id="copy"))
    assert fork.step == 4
    a = _step(api, "src", x2, output_mode=pb.OUTPUT_MODE_ALL)
    b = _step(api, "copy", x2, output_mode=pb.OUTPUT_MODE_ALL)
    np.testing.assert_array_equal(from_tensor(a.outputs), from_tensor(b.outputs))
    want_out, want_state = reference_run(MODEL, np.concatenate([x1, x2]), h0)
    np.testing.assert_allclose(from_tensor(a.outputs), want_out[4:], atol=1e-5)
    exported = api.ExportState(pb.ExportStateRequest(session_id="src"))
    np.testing.assert_allclose(from_tensor(exported.state), want_state, atol=1e-5)
    assert exported.session.step == 7
    # Import into a new session (migration) and continue identically.
    api.ImportState(
        pb.ImportStateRequest(
            session_id="moved", state=exported.state, create=True, model="m", step=7
        )
    )
    assert api.GetSession(pb.GetSessionRequest(session_id="moved")).step == 7
    x3 = _x(2, 3)
    c = _step(api, "src", x3, return_state=True)
    d = _step(api, "moved", x3, return_state=True)
    np.testing.assert_array_equal(from_tensor(c.state), from_tensor(d.state))
    assert d.step == 9


def test_reset_and_end(api):
    x = _x(3, 4)
    first = _step(api, "re", x, start=True, model="m", output_mode=pb.OUTPUT_MODE_ALL)
    assert first.created and first.step == 3
    _step(api, "re", _x(2, 5))
    again = _step(api, "re", x, reset=True, output_mode=pb.OUTPUT_MODE_ALL, end=True)
    assert again.step == 3 and again.closed and not again.created
    np.testing.assert_array_equal(from_tensor(first.outputs), from_tensor(again.outputs))
    _expect(lambda: _step(api, "re", x), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


def test_expected_step_retry_is_exactly_once(api):
    api.OpenSession(pb.OpenSessionRequest(model="m", session_id="idem"))
    x = _x(2, 6)
    first = _step(api, "idem", x, expected_step=0, request_id="req-1")
    retry = _step(api, "idem", x, expected_step=0, request_id="req-1")
    assert (first.step, retry.step, retry.replayed, first.replayed) == (2, 2, True, False)
    assert retry.outputs == first.outputs
    assert api.GetSession(pb.GetSessionRequest(session_id="idem")).step == 2
    _, metadata = _expect(
        lambda: _step(api, "idem", x, expected_step=7, request_id="req-2"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "STEP_GAP",
    )
    assert metadata["current_step"] == "2"
    assert _step(api, "idem", x, expected_step=2, request_id="req-3").step == 4


def test_idle_ttl_expiry_is_reported_as_expired():
    # The server's default TTL is short here, so a "0 = never" read as "use the
    # default" would expire "kept" too.
    settings = {"sweep_interval_seconds": 0.05, "idle_ttl_seconds": 0.2}
    with running_server([MODEL], **settings) as srv, stub(srv.address) as api:
        store = srv.server.runtimes[0].table
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="kept", idle_ttl_seconds=0))
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="short"))  # the default
        # Only the sweeper removes an expired session: wait for it to have done so.
        wait_until(lambda: srv.run_sync(lambda: "short" not in store), 60, "the sweep")
        _expect(
            lambda: api.GetSession(pb.GetSessionRequest(session_id="short")),
            grpc.StatusCode.NOT_FOUND,
            "SESSION_EXPIRED",
        )
        # That sweep went through "kept" too: it is older than "short", so it had
        # been idle for longer than the TTL that expired "short".
        assert api.GetSession(pb.GetSessionRequest(session_id="kept")).session_id == "kept"


def test_max_sessions_rejects_or_evicts_lru():
    with running_server([MODEL], max_sessions=3) as srv, stub(srv.address) as api:
        for i in range(3):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=f"r{i}"))
        _expect(
            lambda: api.OpenSession(pb.OpenSessionRequest(model="m")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CAPACITY_FULL",
        )
        _expect(
            lambda: _step(api, "new", _x(1), start=True, model="m"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CAPACITY_FULL",
        )
    with running_server([MODEL], max_sessions=3, eviction="lru") as srv, stub(srv.address) as api:
        for i in range(3):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=f"l{i}"))
        _step(api, "l0", _x(1))  # l1 is now the least recently used
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="l3"))
        _expect(lambda: _step(api, "l1", _x(1)), grpc.StatusCode.NOT_FOUND, "SESSION_EVICTED")
        assert api.GetSession(pb.GetSessionRequest(session_id="l0")).step == 1


def test_models_health_and_reflection(server, api):
    models = api.ListModels(pb.ListModelsRequest()).models
    assert [(m.name, m.input_size, m.hidden_size, m.num_layers, m.output_size) for m in models] == [
        ("m", 8, 16, 2, 5)
    ]
    info = api.GetModel(pb.GetModelRequest(name="m"))
    assert info.input_kind == pb.INPUT_KIND_DENSE and info.state_bytes_per_session == 2 * 16 * 4
    with grpc.insecure_channel(server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "seqinfer.v1.Seqinfer"):
            status = check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        reply = next(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"seqinfer.v1.Seqinfer", "grpc.health.v1.Health"} <= names
