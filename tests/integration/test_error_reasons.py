"""Every error reason of the README's table that needs the server in a particular
state, over real gRPC: QUEUE_FULL, DEADLINE, DRAINING, INTERNAL_ERROR and
SESSION_EXISTS; and that a bad item of StreamSteps or StepMany carries exactly
the status (code, message, ErrorInfo domain, reason and metadata) the unary
call gets for the same request.

The states are reached with an ``EngineGate`` holding the engine, never by
waiting for time to pass: a queue fills while a batch is held, a drain is in
progress while a batch is held, a deadline passes while a batch is held.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import (
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

DENSE = make_model("dense", name="m", seed=21)
TWIN = make_model("dense", name="twin", seed=22)  # same state shape as DENSE
TOKENS = make_model("tokens", name="t", input_size=30, seed=23)
F32 = np.float32
ONE = to_tensor(np.ones((1, 8), F32))


class Recorder(Observer):
    """Counts what the server reports; called on the server's loop thread."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, ...]] = Counter()

    def request_rejected(self, model: str, reason: str) -> None:
        self.events["rejected", reason] += 1

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        self.events["rpc", method, code] += 1


def _status(call: Any) -> status_pb2.Status:
    """The rich status of a failed unary call, checked for an ErrorInfo of our domain."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    status = rpc_status.from_call(info.value)
    assert status is not None, f"no rich status: {info.value.code()} {info.value.details()}"
    assert status.code == info.value.code().value[0] and status.message == info.value.details()
    return status


def _info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.domain == "seqinfer.v1"
    return info


def _item_statuses(api: Any, request: pb.StepRequest) -> tuple[Any, Any]:
    """The error Status of ``request`` sent as the only item of a stream and of a StepMany."""
    (streamed,) = list(api.StreamSteps(iter([request])))
    (many,) = api.StepMany(pb.StepManyRequest(steps=[request])).results
    assert streamed.WhichOneof("outcome") == "error", streamed
    assert many.WhichOneof("outcome") == "error", many
    return streamed.error, many.error


def _same_everywhere(api: Any, request: pb.StepRequest) -> status_pb2.Status:
    """Unary, stream item and StepMany item fail with one identical status; returns it."""
    unary = _status(lambda: api.Step(request))
    streamed, many = _item_statuses(api, request)
    assert streamed == unary, (streamed, unary)
    assert many == unary, (many, unary)
    return unary


def _queue_depth(server: Any, name: str) -> int:
    def read() -> int:
        (runtime,) = [r for r in server.server.runtimes if r.spec.name == name]
        return int(runtime.scheduler.queue_depth)

    return int(server.run_sync(read))


def _pending(server: Any, sid: str) -> list[Any]:
    """A session's queued StepItems (call on the server's loop)."""
    for runtime in server.server.runtimes:
        session = runtime.table.by_id.get(sid)
        if session is not None:
            return list(session.pending or ())
    raise KeyError(sid)


# ------------------------------------------------------------ QUEUE_FULL --


def test_queue_full_while_the_queue_is_full_and_only_then():
    recorder = Recorder()
    with (
        running_server([DENSE], observer=recorder, max_queue_size=2) as server,
        stub(server.address) as api,
    ):
        for sid in ("a", "b", "c", "d"):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=sid))
        with gated(server) as gate:
            held = api.Step.future(pb.StepRequest(session_id="a", inputs=ONE))
            gate.wait_entered(1)  # a is in the engine, out of the queue
            queued = [api.Step.future(pb.StepRequest(session_id=s, inputs=ONE)) for s in "bc"]
            wait_until(lambda: _queue_depth(server, "m") == 2, what="b and c queued")
            status = _same_everywhere(api, pb.StepRequest(session_id="d", inputs=ONE))
            info = _info(status)
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert info.reason == "QUEUE_FULL"
            assert dict(info.metadata) == {"bound": "max_queue_size", "limit": "2"}
            # A refused implicit start leaves no session behind.
            start = pb.StepRequest(session_id="e", start=True, model="m", inputs=ONE)
            assert _info(_status(lambda: api.Step(start))).reason == "QUEUE_FULL"
            gone = _status(lambda: api.GetSession(pb.GetSessionRequest(session_id="e")))
            assert _info(gone).reason == "SESSION_NOT_FOUND"
            gate.open()
            assert [f.result(60).step for f in (held, *queued)] == [1, 1, 1]
        assert api.GetSession(pb.GetSessionRequest(session_id="d")).step == 0
        # The queue has room again: the same request is accepted now.
        assert api.Step(pb.StepRequest(session_id="d", inputs=ONE)).step == 1
    assert recorder.events["rejected", "backpressure"] == 4


# -------------------------------------------------------------- DEADLINE --


def test_deadline_passed_in_the_queue_is_rejected_by_the_server_and_applies_nothing():
    """The client's own timer ends the call first, so the server's DEADLINE status
    never reaches the wire; what is certain is the server's own verdict (the
    observer's "deadline" rejection) and that nothing was applied."""
    recorder = Recorder()
    with (
        running_server([DENSE], observer=recorder) as server,
        stub(server.address) as api,
    ):
        for sid in ("busy", "late"):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=sid))
        with gated(server) as gate:
            held = api.Step.future(pb.StepRequest(session_id="busy", inputs=ONE))
            gate.wait_entered(1)
            late = pb.StepRequest(session_id="late", inputs=ONE)
            # All three in flight at once, so the test waits for one deadline only.
            calls = [
                api.Step.future(late, timeout=3.0),
                api.StreamSteps(iter([late]), timeout=3.0),
                api.StepMany.future(pb.StepManyRequest(steps=[late]), timeout=3.0),
            ]
            wait_until(lambda: _queue_depth(server, "m") == 3, what="the late items queued")
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call.result() if hasattr(call, "result") else list(call)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _queue_depth(server, "m") == 3  # still queued behind the held batch
            # The client's timer fires a little before the server's (which started
            # when the call arrived): let the server's own deadlines pass too.
            last = max(server.run_sync(lambda: [i.deadline for i in _pending(server, "late")]))
            wait_until(lambda: time.monotonic() > last, what="the server's deadlines")
            gate.open()
            assert held.result(60).step == 1
            wait_until(lambda: _queue_depth(server, "m") == 0, what="the late items admitted")
        assert recorder.events["rejected", "deadline"] == 3
        assert recorder.events["rejected", "cancelled"] == 0
        export = api.ExportState(pb.ExportStateRequest(session_id="late"))
        assert export.session.step == 0 and not from_tensor(export.state).any()


# -------------------------------------------------------------- DRAINING --


def test_draining_refuses_new_work_with_draining_while_accepted_work_finishes():
    with running_server([DENSE]) as server:
        channel = grpc.insecure_channel(server.address)
        api = pb_grpc.SeqinferStub(channel)
        for sid in ("a", "b"):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=sid))
        with gated(server) as gate:
            accepted = api.Step.future(pb.StepRequest(session_id="a", inputs=ONE))
            gate.wait_entered(1)
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
            stopper.start()
            # Drain waits for the held batch, so the listener is still up.
            wait_until(lambda: server.server.engine.draining, what="drain started")
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            status = _same_everywhere(api, pb.StepRequest(session_id="b", inputs=ONE))
            assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert _info(status).reason == "DRAINING"
            state = to_tensor(np.zeros((2, 16), F32))
            for call in (
                lambda: api.OpenSession(pb.OpenSessionRequest(model="m", session_id="new")),
                lambda: api.ForkSession(pb.ForkSessionRequest(session_id="a")),
                lambda: api.ImportState(
                    pb.ImportStateRequest(session_id="imp", state=state, create=True, model="m")
                ),
            ):
                refused = _status(call)
                assert refused.code == grpc.StatusCode.UNAVAILABLE.value[0]
                assert _info(refused).reason == "DRAINING"
            gate.open()
            assert accepted.result(60).step == 1  # accepted before the drain: answered
        stopper.join(60)
        assert not stopper.is_alive()
        channel.close()


# -------------------------------------------------------- INTERNAL_ERROR --

SECRET = "cuBLAS handle 0x7f3a at /opt/secret/engine.py:42"


def _fail_batches_of(server: Any, victim: str, times: int) -> None:
    """The next ``times`` engine batches holding ``victim`` raise instead of computing."""

    def patch() -> None:
        (runtime,) = server.server.runtimes
        slot = runtime.table.by_id[victim].slot
        real = runtime.engine.run
        left = [times]

        def run(slab: Any, items: list[Any]) -> Any:
            if left[0] and any(item.slot == slot for item in items):
                left[0] -= 1
                raise RuntimeError(SECRET)
            return real(slab, items)

        runtime.engine.run = run

    server.run_sync(patch)


def test_engine_failure_is_internal_error_without_its_text_and_disturbs_no_one():
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(F32)
    with running_server([DENSE]) as server, stub(server.address) as api:
        for sid in ("victim", "bystander"):
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id=sid))
        api.Step(pb.StepRequest(session_id="bystander", inputs=to_tensor(x)))
        before = api.ExportState(pb.ExportStateRequest(session_id="bystander"))
        _fail_batches_of(server, "victim", times=3)
        request = pb.StepRequest(session_id="victim", inputs=to_tensor(x[:1]))
        status = _same_everywhere(api, request)
        assert status.code == grpc.StatusCode.INTERNAL.value[0]
        assert _info(status).reason == "INTERNAL_ERROR"
        assert "secret" not in status.message.lower() and "0x7f3a" not in status.message
        assert "RuntimeError" in status.message  # the type only, for the operator
        after = api.ExportState(pb.ExportStateRequest(session_id="bystander"))
        assert after.state.data == before.state.data and after.session.step == 3
        victim = api.ExportState(pb.ExportStateRequest(session_id="victim"))
        assert victim.session.step == 0 and not from_tensor(victim.state).any()
        # The fault was the server's, not the session's: both step on normally.
        reply = api.Step(pb.StepRequest(session_id="victim", inputs=to_tensor(x[:1])))
        np.testing.assert_allclose(
            from_tensor(reply.outputs), reference_run(DENSE, x[:1])[0][-1], atol=1e-5, rtol=0
        )
        assert api.Step(pb.StepRequest(session_id="bystander", inputs=ONE)).step == 4


# -------------------------------------------------------- SESSION_EXISTS --


def test_session_exists_for_open_fork_and_import_into_another_models_session():
    state = to_tensor(np.full((2, 16), 0.5, F32))
    with running_server([DENSE, TWIN]) as server, stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="mine"))
        api.OpenSession(pb.OpenSessionRequest(model="twin", session_id="theirs"))
        api.Step(pb.StepRequest(session_id="theirs", inputs=ONE))
        theirs = api.ExportState(pb.ExportStateRequest(session_id="theirs"))
        for call in (
            lambda: api.OpenSession(pb.OpenSessionRequest(model="m", session_id="mine")),
            lambda: api.OpenSession(pb.OpenSessionRequest(model="m", session_id="theirs")),
            lambda: api.ForkSession(
                pb.ForkSessionRequest(session_id="mine", new_session_id="mine")
            ),
            lambda: api.ForkSession(
                pb.ForkSessionRequest(session_id="mine", new_session_id="theirs")
            ),
            # create on model m, but the id is a twin session: not silently overwritten.
            lambda: api.ImportState(
                pb.ImportStateRequest(session_id="theirs", state=state, create=True, model="m")
            ),
        ):
            status = _status(call)
            assert status.code == grpc.StatusCode.ALREADY_EXISTS.value[0], status
            info = _info(status)
            assert info.reason == "SESSION_EXISTS" and info.metadata["session_id"] in status.message
        after = api.ExportState(pb.ExportStateRequest(session_id="theirs"))
        assert after.state.data == theirs.state.data and after.session.step == 1
        assert after.session.model == "twin"
        # On its own model, create=true is an idempotent overwrite (a retried import).
        for _ in range(2):
            info = api.ImportState(
                pb.ImportStateRequest(
                    session_id="mine", state=state, create=True, model="m", step=7
                )
            )
            assert (info.model, info.step) == ("m", 7)
        mine = api.ExportState(pb.ExportStateRequest(session_id="mine"))
        assert mine.state.data == state.data


# ------------------------------------------ per-item errors equal unary ones --

STEP_GAP = pb.StepRequest(session_id="d", inputs=ONE, expected_step=7, request_id="r")
BAD_ITEMS = {
    "unknown session": (pb.StepRequest(session_id="ghost", inputs=ONE), "SESSION_NOT_FOUND"),
    "unknown model": (
        pb.StepRequest(session_id="n", start=True, model="nope", inputs=ONE),
        "MODEL_NOT_FOUND",
    ),
    "wrong feature size": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((2, 7), F32))),
        "INVALID_INPUT",
    ),
    "floats for a token model": (
        pb.StepRequest(session_id="tk", inputs=to_tensor(np.ones(3, F32))),
        "INVALID_INPUT",
    ),
    "token out of vocabulary": (
        pb.StepRequest(session_id="tk", inputs=to_tensor(np.array([2, 30], np.int64))),
        "INVALID_INPUT",
    ),
    "NaN": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.full((1, 8), np.nan, F32))),
        "INVALID_INPUT",
    ),
    "T above the maximum": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((51, 8), F32))),
        "TOO_LARGE",
    ),
    "empty id": (pb.StepRequest(session_id="", inputs=ONE), "INVALID_INPUT"),
    "oversized id": (
        pb.StepRequest(session_id="x" * 129, start=True, model="m", inputs=ONE),
        "INVALID_INPUT",
    ),
    "negative ttl": (
        pb.StepRequest(session_id="n", start=True, model="m", idle_ttl_seconds=-1, inputs=ONE),
        "INVALID_INPUT",
    ),
    "unknown output mode": (
        pb.StepRequest(session_id="d", output_mode=42, inputs=ONE),
        "INVALID_INPUT",
    ),
    "step gap": (STEP_GAP, "STEP_GAP"),
}


@pytest.fixture(scope="module")
def items_api():
    with (
        running_server([DENSE, TOKENS], max_timesteps=50) as server,
        stub(server.address) as api,
    ):
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="d"))
        api.OpenSession(pb.OpenSessionRequest(model="t", session_id="tk"))
        yield api
        # Nothing of the bad items was applied, and no session was left behind.
        assert api.GetSession(pb.GetSessionRequest(session_id="d")).step == 0
        assert api.GetSession(pb.GetSessionRequest(session_id="tk")).step == 0
        assert sum(m.open_sessions for m in api.ListModels(pb.ListModelsRequest()).models) == 2


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_a_bad_item_gets_the_unary_status_in_streams_and_step_many(items_api, case: str):
    request, reason = BAD_ITEMS[case]
    status = _same_everywhere(items_api, request)
    info = _info(status)
    assert info.reason == reason, status
    assert status.code not in (grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0])
    if reason in ("INVALID_INPUT", "TOO_LARGE"):
        assert status.message.startswith(info.metadata["field"] + ":"), status
    if reason == "STEP_GAP":
        assert info.metadata["current_step"] == "0"
