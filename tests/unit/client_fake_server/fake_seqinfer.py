"""A small scripted in-process seqinfer server for the client's unit tests.

The fake implements the contract's step-counter rules (expected_step,
replay of the last request_id, STEP_GAP with current_step) on a toy "model"
(outputs = 2 * last input row, state = [[counter]]), and lets a test script
failures: fail a call before handling it, or *after* applying it (a lost
reply), or break a stream after N replies. That is enough to check the
client's decoding, retries (same request_id and expected_step resent) and
stream matching honestly, over real gRPC on loopback.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from seqinfer.client import RetryPolicy
from seqinfer.client.tensors import from_proto, to_proto
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

# Retries in milliseconds: the scripted failures are instant, waiting adds nothing.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
# One timestep for the toy model (input size 3).
X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


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
