"""The client against a small scripted in-process gRPC server.

The fake implements the contract's step-counter rules (expected_step,
replay of the last request_id, STEP_GAP with current_step) on a toy "model"
(outputs = 2 * last input row, state = [[counter]]), and lets a test script
failures: fail a call before handling it, or *after* applying it (a lost
reply), or break a stream after N replies. That is enough to check the
client's decoding, retries (same request_id and expected_step resent) and
stream matching honestly, over real gRPC on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from seqinfer.client import (
    AsyncClient,
    Client,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    SessionExists,
    SessionNotFound,
    StepCall,
    StepGap,
    Unavailable,
)
from seqinfer.client.tensors import from_proto, to_proto
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def _status(code: grpc.StatusCode, message: str, reason: str, **md: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="seqinfer.v1", metadata=md))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


class Failure(Exception):
    """A domain error inside the fake, carrying its rich status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


@dataclass
class FakeSession:
    model: str
    step: int = 0
    last_request_id: str = ""
    last_expected: int = -1
    last_reply: pb.StepResponse | None = None


@dataclass
class Script:
    """What the fake should do wrong, and what it saw."""

    # method name -> list of (code, reason, after_apply) to pop, one per call
    failures: dict[str, list[tuple[grpc.StatusCode, str, bool]]] = field(default_factory=dict)
    # break each StreamSteps call after this many replies (popped per call)
    stream_breaks: list[int] = field(default_factory=list)
    # after a break point, apply this many more steps without replying first
    stream_silent: int = 0
    # while set and not yet released, a stream holds its first reply (and, as it
    # handles requests in order, everything after it): the test decides when
    hold_replies: threading.Event | None = None
    seen: list[tuple[str, object]] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str], ...]] = field(default_factory=list)


class FakeSeqinfer(pb_grpc.SeqinferServicer):
    def __init__(self) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.script = Script()
        self.lock = threading.Lock()
        self.applied = 0  # timesteps applied, all sessions
        self.stream_calls = 0

    # -- scripting helpers -------------------------------------------------

    def fail(
        self, method: str, code: grpc.StatusCode, reason: str = "", after_apply: bool = False
    ) -> None:
        self.script.failures.setdefault(method, []).append((code, reason, after_apply))

    def _scripted(self, method: str) -> tuple[grpc.StatusCode, str, bool] | None:
        queue = self.script.failures.get(method)
        return queue.pop(0) if queue else None

    def _abort(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str, msg: str
    ) -> None:
        if reason:
            context.abort_with_status(rpc_status.to_status(_status(code, msg, reason)))
        context.abort(code, msg)

    def _enter(
        self, method: str, request: object, context: grpc.ServicerContext
    ) -> tuple[grpc.StatusCode, str, bool] | None:
        with self.lock:
            self.script.seen.append((method, request))
            self.script.metadata.append(
                tuple((m.key, m.value) for m in context.invocation_metadata())
            )
            failure = self._scripted(method)
        if failure and not failure[2]:
            self._abort(context, failure[0], failure[1], f"scripted {failure[0].name}")
        return failure

    def _run(self, method: str, request: object, context: grpc.ServicerContext, fn):  # type: ignore[no-untyped-def]
        failure = self._enter(method, request, context)
        try:
            result = fn()
        except Failure as f:
            context.abort_with_status(rpc_status.to_status(f.status))
        if failure:  # after_apply: the work is done but the reply is "lost"
            self._abort(context, failure[0], failure[1], f"scripted {failure[0].name} after apply")
        return result

    def seen(self, method: str) -> list:  # type: ignore[type-arg]
        return [r for m, r in self.script.seen if m == method]

    # -- domain ----------------------------------------------------------

    def _info(self, sid: str) -> pb.SessionInfo:
        s = self.sessions[sid]
        return pb.SessionInfo(
            session_id=sid, model=s.model, model_version="1", step=s.step, tier=pb.STATE_TIER_DEVICE
        )

    def _get(self, sid: str) -> FakeSession:
        s = self.sessions.get(sid)
        if s is None:
            raise Failure(
                _status(grpc.StatusCode.NOT_FOUND, f"no session {sid}", "SESSION_NOT_FOUND")
            )
        return s

    def _open(self, sid: str, model: str) -> None:
        if model != "toy":
            raise Failure(
                _status(grpc.StatusCode.NOT_FOUND, f"no model {model}", "MODEL_NOT_FOUND")
            )
        if sid in self.sessions:
            raise Failure(
                _status(grpc.StatusCode.ALREADY_EXISTS, f"{sid} exists", "SESSION_EXISTS")
            )
        self.sessions[sid] = FakeSession(model)

    def apply(self, req: pb.StepRequest) -> pb.StepResponse:
        with self.lock:
            created = False
            if req.session_id not in self.sessions and req.start:
                self._open(req.session_id, req.model)
                created = True
            s = self._get(req.session_id)
            if req.HasField("expected_step") and req.expected_step != s.step:
                if (
                    req.request_id
                    and req.request_id == s.last_request_id
                    and req.expected_step == s.last_expected
                ):
                    replay = pb.StepResponse()
                    assert s.last_reply is not None
                    replay.CopyFrom(s.last_reply)
                    replay.replayed = True
                    return replay
                raise Failure(
                    _status(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "step gap",
                        "STEP_GAP",
                        current_step=str(s.step),
                    )
                )
            x = from_proto(req.inputs)
            if x.ndim != 2 or x.shape[1] != 3:
                raise Failure(
                    _status(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "inputs: want [T, 3]",
                        "INVALID_INPUT",
                        field="inputs",
                    )
                )
            before = s.step
            s.step = (0 if req.reset else s.step) + x.shape[0]
            self.applied += x.shape[0]
            resp = pb.StepResponse(
                session_id=req.session_id, request_id=req.request_id, step=s.step, created=created
            )
            if req.output_mode != pb.OUTPUT_MODE_NONE:
                out = x * 2 if req.output_mode == pb.OUTPUT_MODE_ALL else x[-1] * 2
                resp.outputs.CopyFrom(to_proto(out.astype(np.float32)))
            if req.return_state:
                resp.state.CopyFrom(to_proto(np.array([[float(s.step)]], dtype=np.float32)))
            s.last_request_id, s.last_expected = req.request_id, before
            s.last_reply = pb.StepResponse()
            s.last_reply.CopyFrom(resp)
            if req.end:
                del self.sessions[req.session_id]
                resp.closed = True
            return resp

    # -- RPCs ---------------------------------------------------------------

    def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        model = pb.ModelInfo(
            name="toy",
            version="1",
            input_kind=pb.INPUT_KIND_DENSE,
            input_size=3,
            hidden_size=1,
            num_layers=1,
            output_kind=pb.OUTPUT_KIND_VALUES,
            output_size=3,
            dtype=pb.DTYPE_FLOAT32,
            device="cpu",
        )
        return self._run(
            "ListModels", request, context, lambda: pb.ListModelsResponse(models=[model])
        )

    def GetModel(self, request, context):  # type: ignore[no-untyped-def]
        def get() -> pb.ModelInfo:
            if request.name != "toy":
                raise Failure(
                    _status(
                        grpc.StatusCode.NOT_FOUND, f"no model {request.name}", "MODEL_NOT_FOUND"
                    )
                )
            return self.ListModels(pb.ListModelsRequest(), context).models[0]

        return self._run("GetModel", request, context, get)

    def OpenSession(self, request, context):  # type: ignore[no-untyped-def]
        def open_() -> pb.SessionInfo:
            with self.lock:
                self._open(request.session_id, request.model)
                return self._info(request.session_id)

        return self._run("OpenSession", request, context, open_)

    def GetSession(self, request, context):  # type: ignore[no-untyped-def]
        def get() -> pb.SessionInfo:
            with self.lock:
                self._get(request.session_id)
                return self._info(request.session_id)

        return self._run("GetSession", request, context, get)

    def CloseSession(self, request, context):  # type: ignore[no-untyped-def]
        def close() -> pb.CloseSessionResponse:
            with self.lock:
                s = self._get(request.session_id)
                del self.sessions[request.session_id]
                return pb.CloseSessionResponse(final_step=s.step)

        return self._run("CloseSession", request, context, close)

    def ForkSession(self, request, context):  # type: ignore[no-untyped-def]
        def fork() -> pb.SessionInfo:
            with self.lock:
                src = self._get(request.session_id)
                self._open(request.new_session_id, src.model)
                self.sessions[request.new_session_id].step = src.step
                return self._info(request.new_session_id)

        return self._run("ForkSession", request, context, fork)

    def ExportState(self, request, context):  # type: ignore[no-untyped-def]
        def export() -> pb.ExportStateResponse:
            with self.lock:
                s = self._get(request.session_id)
                state = to_proto(np.array([[float(s.step)]], dtype=np.float32))
                return pb.ExportStateResponse(session=self._info(request.session_id), state=state)

        return self._run("ExportState", request, context, export)

    def ImportState(self, request, context):  # type: ignore[no-untyped-def]
        def import_() -> pb.SessionInfo:
            with self.lock:
                if request.session_id not in self.sessions and request.create:
                    self._open(request.session_id, request.model)
                s = self._get(request.session_id)
                if request.HasField("step"):
                    s.step = request.step
                return self._info(request.session_id)

        return self._run("ImportState", request, context, import_)

    def Step(self, request, context):  # type: ignore[no-untyped-def]
        return self._run("Step", request, context, lambda: self.apply(request))

    def StepMany(self, request, context):  # type: ignore[no-untyped-def]
        def many() -> pb.StepManyResponse:
            return pb.StepManyResponse(results=[self._result(r) for r in request.steps])

        return self._run("StepMany", request, context, many)

    def _result(self, req: pb.StepRequest) -> pb.StepResult:
        try:
            return pb.StepResult(
                session_id=req.session_id, request_id=req.request_id, response=self.apply(req)
            )
        except Failure as f:
            return pb.StepResult(
                session_id=req.session_id, request_id=req.request_id, error=f.status
            )

    def StreamSteps(self, request_iterator, context):  # type: ignore[no-untyped-def]
        with self.lock:
            self.stream_calls += 1
            self.script.metadata.append(
                tuple((m.key, m.value) for m in context.invocation_metadata())
            )
            limit = self.script.stream_breaks.pop(0) if self.script.stream_breaks else None
        answered = silent = 0
        for req in request_iterator:
            with self.lock:
                self.script.seen.append(("StreamSteps", req))
            result = self._result(req)
            if limit is not None and answered >= limit:
                # The step was applied but the stream dies before its reply
                # (optionally after applying a few more without replying).
                silent += 1
                if silent > self.script.stream_silent:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "scripted stream break")
                continue
            answered += 1
            hold = self.script.hold_replies
            if hold is not None:
                assert hold.wait(30), "the test never released the held reply"
            yield result


@pytest.fixture
def fake() -> Iterator[tuple[FakeSeqinfer, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = FakeSeqinfer()
    pb_grpc.add_SeqinferServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


@pytest.fixture
def client(fake: tuple[FakeSeqinfer, str]) -> Iterator[Client]:
    with Client(fake[1], retry=FAST_RETRY, timeout=10, metadata=[("x-test", "yes")]) as c:
        yield c


X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


# -- unary calls ---------------------------------------------------------------


def test_models_and_typed_errors(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    (model,) = client.list_models()
    assert (model.name, model.input_kind, model.output_kind, model.dtype) == (
        "toy",
        "dense",
        "values",
        "float32",
    )
    assert client.get_model("toy").input_size == 3
    with pytest.raises(ModelNotFound) as info:
        client.get_model("nope")
    assert info.value.reason == "MODEL_NOT_FOUND" and info.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(SessionNotFound):
        client.get_session("missing")
    # Every call carried the client's metadata.
    assert all(("x-test", "yes") in md for md in fake[0].script.metadata)


def test_session_context_manager_tracks_counter_and_closes(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    with client.session("toy") as s:
        assert s.session_id in servicer.sessions
        out = s.step(np.ones((4, 3)), output_mode="all", return_state=True)
        assert out.outputs is not None and out.outputs.shape == (4, 3)
        assert out.state is not None and out.state.tolist() == [[4.0]]
        assert s.step_count == 4
        np.testing.assert_array_equal(s([0.5, 1.0, 1.5]), [1.0, 2.0, 3.0])  # [F] -> [1, F]
        assert s.step_count == 5
    assert s.session_id not in servicer.sessions
    steps = servicer.seen("Step")
    assert [r.expected_step for r in steps] == [0, 4]
    assert len({r.request_id for r in steps}) == 2
    # Session-scoped calls carry the routing header.
    assert any(("x-session-id", s.session_id) in md for md in servicer.script.metadata)


def test_exit_swallows_an_already_gone_session(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    with client.session("toy", "gone") as s:
        client.close_session("gone")
    assert s.closed


def test_step_retry_after_lost_reply_is_replayed_not_reapplied(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    out = s.step(X)
    assert out.replayed and out.step == 1 and s.step_count == 1
    first, retry = servicer.seen("Step")
    assert retry.request_id == first.request_id and retry.expected_step == first.expected_step == 0
    assert servicer.applied == 1
    np.testing.assert_array_equal(out.outputs, X[-1] * 2)


def test_step_retry_when_server_never_got_it(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, "DRAINING")
    servicer.fail("Step", grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
    out = s.step(X)
    assert not out.replayed and out.step == 1
    assert len({r.request_id for r in servicer.seen("Step")}) == 1
    assert len(servicer.seen("Step")) == 3


def test_no_retry_without_expected_step_or_for_non_retryable(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    client.open_session("toy", "a")
    servicer.fail("Step", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Unavailable):
        client.step("a", X)  # no expected_step: a resend could apply twice
    assert len(servicer.seen("Step")) == 1
    servicer.fail("Step", grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_FULL")
    with pytest.raises(Exception) as info:
        client.step("a", X, expected_step=0)
    assert info.value.reason == "CAPACITY_FULL"  # type: ignore[attr-defined]
    assert len(servicer.seen("Step")) == 2


def test_retries_give_up_after_max_attempts(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    for _ in range(10):
        servicer.fail("ListModels", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(Unavailable):
        client.list_models()
    assert len(servicer.seen("ListModels")) == FAST_RETRY.max_attempts


def test_step_gap_carries_current_step_and_resyncs_handle(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    s = client.open_session("toy")
    client.step(s.session_id, np.ones((3, 3)))  # someone else steps it
    with pytest.raises(StepGap) as info:
        s.step(X)
    assert info.value.current_step == 3
    assert s.step_count == 3
    assert s.step(X).step == 4


def test_invalid_input_field(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    s = client.open_session("toy")
    with pytest.raises(InvalidInput) as info:
        s.step(np.ones((1, 5)))
    assert info.value.field == "inputs"
    assert s.step_count == 0


def test_open_retry_adopts_own_random_id(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    servicer.fail("OpenSession", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    s = client.open_session("toy")
    assert list(servicer.sessions) == [s.session_id]  # one session, not two
    # A caller-chosen id is not adopted: it may be someone else's.
    servicer.fail("OpenSession", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    with pytest.raises(SessionExists):
        client.open_session("toy", "mine")


def test_fork_export_import(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    s = client.open_session("toy", "src")
    s.step(np.ones((2, 3)))
    f = s.fork("copy")
    assert f.session_id == "copy" and f.step_count == 2
    state, info = client.export_state("copy")
    assert state.tolist() == [[2.0]] and info.step == 2
    info = client.import_state("new", state, create=True, model="toy", step=7)
    assert info.step == 7
    assert client.attach("new").step_count == 7
    assert client.close_session("new") == 7


def test_deadline_is_per_call(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    with Client(address, retry=RetryPolicy(max_attempts=100, initial_backoff=0.05, jitter=0)) as c:
        for _ in range(100):
            servicer.fail("ListModels", grpc.StatusCode.UNAVAILABLE)
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            c.list_models(timeout=0.5)
        # Retries stopped at the deadline: the 100 scripted failures, backing off
        # up to 2 s each, would take minutes. Only a generous bound on time.
        assert time.monotonic() - t0 < 10
        assert servicer.script.failures["ListModels"], "every attempt was made"


# -- step_many -------------------------------------------------------------------


def test_step_many_mixed_results_and_counters(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    a = client.open_session("toy")
    b = client.open_session("toy")
    servicer.fail("StepMany", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    results = client.step_many(
        [
            (a, np.ones((2, 3))),
            (b, X),
            StepCall("missing", X, expected_step=0),
            StepCall("new", X, start=True, model="toy", expected_step=0),
        ]
    )
    ra, rb, rm, rn = results
    assert ra.step == 2 and rb.step == 1 and rn.created  # type: ignore[union-attr]
    assert ra.replayed  # type: ignore[union-attr]
    assert isinstance(rm, SessionNotFound)
    assert (a.step_count, b.step_count) == (2, 1)
    assert servicer.applied == 4  # the retried message applied nothing twice


# -- streams -----------------------------------------------------------------


def test_stream_pipelines_many_sessions(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    servicer, _ = fake
    sessions = [client.open_session("toy") for _ in range(5)]
    with client.stream() as stream:
        futs = [
            (s, i, stream.submit(s, np.full((1, 3), i, dtype=np.float32)))
            for i in range(20)
            for s in sessions
        ]
    for s, i, fut in futs:
        out = fut.result()
        assert out.session_id == s.session_id
        np.testing.assert_array_equal(out.outputs, [2 * i] * 3)
        assert out.step == i + 1
    assert all(s.step_count == 20 for s in sessions)
    sent = servicer.seen("StreamSteps")
    for s in sessions:
        assert [r.expected_step for r in sent if r.session_id == s.session_id] == list(range(20))


def test_stream_item_errors_do_not_stop_the_stream(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    s = client.open_session("toy")
    # Hold the replies until all four are sent: otherwise the bad one's refusal
    # may come back before `gap` is submitted, which then expects 1 and applies.
    servicer.script.hold_replies = threading.Event()
    with client.stream() as stream:
        ok1 = stream.submit(s, X)
        bad = stream.submit(s, np.ones((1, 5)))  # invalid: not applied
        gap = stream.submit(s, X)  # pipelined behind the bad one -> STEP_GAP
        missing = stream.submit("missing", X)
        servicer.script.hold_replies.set()
    assert [r.expected_step for r in servicer.seen("StreamSteps")[:3]] == [0, 1, 2]
    assert ok1.result().step == 1
    assert isinstance(bad.exception(), InvalidInput)
    gap_err = gap.exception()
    assert isinstance(gap_err, StepGap) and gap_err.current_step == 1
    assert isinstance(missing.exception(), SessionNotFound)
    assert s.step_count == 1  # resynced to the server's counter
    with client.stream() as stream:
        assert stream.step(s, X).step == 2


def test_stream_reconnects_and_resends_exactly_once(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    servicer.script.stream_breaks = [3, 5]
    sessions = [client.open_session("toy") for _ in range(3)]
    with client.stream() as stream:
        futs = [stream.submit(s, X) for _ in range(10) for s in sessions]
        anon = stream.submit("unsafe", X, start=True, model="toy")  # no expected_step
    results = []
    for f in futs:
        results.append(f.result(timeout=10))
    assert all(s.step_count == 10 for s in sessions)
    assert servicer.applied in (30, 31)  # 30 session steps exactly once (+ maybe the unsafe one)
    assert any(r.replayed for r in results)
    assert servicer.stream_calls == 3  # broke twice, reopened twice
    if anon.exception() is not None:
        assert isinstance(anon.exception(), Unavailable)
    per_session = {s.session_id: servicer.sessions[s.session_id].step for s in sessions}
    assert set(per_session.values()) == {10}


def test_stream_reports_applied_steps_whose_replies_cannot_be_replayed(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    servicer.script.stream_breaks = [1]
    servicer.script.stream_silent = 2  # steps 2, 3 and 4 applied, unanswered
    s = client.open_session("toy")
    with client.stream() as stream:
        futs = [stream.submit(s, X) for _ in range(5)]
    outcomes = [f.exception() or f.result() for f in futs]
    assert outcomes[0].step == 1  # type: ignore[union-attr]
    # Only a session's last reply is cached: 2 and 3 were applied, replies gone.
    assert [type(o).__name__ for o in outcomes[1:3]] == ["ReplyLost", "ReplyLost"]
    assert outcomes[1].current_step == 4  # type: ignore[union-attr]
    assert outcomes[3].replayed and outcomes[3].step == 4  # type: ignore[union-attr]
    assert outcomes[4].step == 5  # type: ignore[union-attr]
    assert servicer.applied == 5 and s.step_count == 5  # every step exactly once


def test_stream_gives_up_when_retries_run_out(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    servicer.script.stream_breaks = [0] * 10
    with Client(address, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as c:
        s = c.open_session("toy")
        stream = c.stream()
        fut = stream.submit(s, X)
        assert isinstance(fut.exception(timeout=10), Unavailable)
        with pytest.raises(Unavailable):
            stream.submit(s, X)
        stream.close()
    assert s.step_count == 0  # rolled back: the handle does not know it was applied


# -- asyncio -------------------------------------------------------------------


async def test_async_client_mirrors_sync(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    async with AsyncClient(address, retry=FAST_RETRY, timeout=10) as c:
        (model,) = await c.list_models()
        assert model.name == "toy"
        with pytest.raises(ModelNotFound):
            await c.get_model("nope")
        servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, after_apply=True)
        async with c.session("toy") as s:
            out = await s.step(X)
            assert out.replayed and s.step_count == 1
            np.testing.assert_array_equal(await s([1.0, 1.0, 1.0]), [2.0, 2.0, 2.0])
            f = await s.fork()
            assert f.step_count == 2
            state, _ = await c.export_state(f.session_id)
            assert state.tolist() == [[2.0]]
        assert s.session_id not in servicer.sessions
        a, b = await c.open_session("toy"), await c.open_session("toy")
        ra, rb = await c.step_many([(a, X), (b, np.ones((2, 3)))])
        assert (ra.step, rb.step) == (1, 2)  # type: ignore[union-attr]
        assert (a.step_count, b.step_count) == (1, 2)
        with pytest.raises(StepGap):
            await c.step(a.session_id, X, expected_step=5)


async def test_async_stream_many_tasks_and_reconnect(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    servicer.script.stream_breaks = [7]
    async with AsyncClient(address, retry=FAST_RETRY, timeout=10) as c:
        sessions = [await c.open_session("toy") for _ in range(4)]
        async with c.stream() as stream:

            async def drive(s) -> list[int]:  # type: ignore[no-untyped-def]
                return [(await stream.step(s, X)).step for _ in range(6)]

            steps = await asyncio.gather(*(drive(s) for s in sessions))
            pipelined = [await stream.submit(sessions[0], X) for _ in range(5)]
            outs = await asyncio.gather(*pipelined)
        assert steps == [list(range(1, 7))] * 4
        assert [o.step for o in outs] == list(range(7, 12))
    assert servicer.applied == 4 * 6 + 5
    assert servicer.stream_calls == 2
