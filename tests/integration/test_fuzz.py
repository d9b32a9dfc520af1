"""Fuzz the API over real gRPC: hostile bytes and field values never reach INTERNAL.

The contract under test, for every call a client can make:

- no status is INTERNAL or UNKNOWN, neither the call's nor any StepResult's
  (a caller's mistake gets a status that names it);
- every error carries an ErrorInfo with a reason (domain seqinfer.v1), so
  none was lost on the way (e.g. trailers past gRPC's metadata limit); the
  one exception is gRPC's own refusal of a message past max_message_bytes;
- every stream call ends (a client deadline firing means it hung), and one
  that ends OK has answered every request it was sent;
- a reply that says OK decodes as the method's response message, and the
  outputs and states it carries are finite (the models are);
- afterwards the server still serves, and a control session none of the
  inputs names has the same step counter and bit-identical state.

Inputs come from tests/integration/fuzz_inputs.py. The suite runs a fixed
seed (derandomized, no example database) with a budget of about a minute on
2 cores; `make fuzz` runs the long profile with a fresh seed
(SEQINFER_FUZZ=long, optionally SEQINFER_FUZZ_SEED). Outcomes are counted by
status code and printed at the end of the module.

Violations are collected rather than raised inside Hypothesis, so that one
run lists every kind of failure (method, status, message, the input), not
only the first one shrunk.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.integration import fuzz_inputs as fi
from tests.support import ServerThread, from_tensor, make_model, running_server, to_tensor

LONG = os.environ.get("SEQINFER_FUZZ") == "long"
EXAMPLES = {
    "raw_unary": 1200,
    "raw_stream": 400,
    "fields": 1200,
    "stub_stream": 300,
    "sessions": 500,
}
settings.register_profile(
    "seqinfer-ci",
    deadline=None,
    derandomize=True,  # a fixed seed: the same examples on every run
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)  # fmt: skip
settings.register_profile("seqinfer-long", settings.get_profile("seqinfer-ci"), derandomize=False)
PROFILE = settings.get_profile("seqinfer-long" if LONG else "seqinfer-ci")
SEED = int(os.environ.get("SEQINFER_FUZZ_SEED") or int.from_bytes(os.urandom(4), "little"))
SCALE = float(os.environ.get("SEQINFER_FUZZ_SCALE", "20")) if LONG else 1.0

# Client deadline per call: a tiny model answers in milliseconds, so reaching
# it means a call hung (a stream that never ends, a reply never sent).
CALL_TIMEOUT = 10.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ITEM_FORBIDDEN = {c.value[0] for c in FORBIDDEN}
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
# gRPC's own answer to a message past max_message_bytes: the one error with no ErrorInfo.
TRANSPORT_LIMIT = "Received message larger than max"
RESPONSES = {m.name: m.output_type.name for m in pb.DESCRIPTOR.services_by_name["Seqinfer"].methods}


def _fuzz(name: str) -> Any:
    """Settings for one property: the profile, its example budget, and in the long run a seed."""

    def decorate(fn: Any) -> Any:
        fn = settings(PROFILE, max_examples=max(1, round(EXAMPLES[name] * SCALE)))(fn)
        return seed(SEED)(fn) if LONG else fn

    return decorate


@dataclass
class Fuzz:
    """The server under fuzz, its channel, and what the calls came back with."""

    server: ServerThread
    channel: grpc.Channel
    control: pb.ExportStateResponse
    counts: Counter[str] = field(default_factory=Counter)
    violations: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def violate(self, method: str, code: str, details: str, given: Any) -> None:
        # One entry per kind: digits and long runs would make every echo unique.
        key = (method, code, re.sub(r"\d+|(.)\1{8,}", "#", details)[:160])
        self.violations.setdefault(key, _show(given)[:400])

    def record(
        self, group: str, method: str, code: grpc.StatusCode, details: str, given: Any,
        error: grpc.RpcError | None = None,
    ) -> None:  # fmt: skip
        self.counts[f"{group} {code.name}"] += 1
        if code in FORBIDDEN:
            self.violate(method, code.name, details, given)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.violate(method, "HUNG (client deadline)", details, given)
        elif error is not None and not _has_error_info(error) and TRANSPORT_LIMIT not in details:
            # The server's own errors all say why; one without (e.g. trailers past gRPC's
            # metadata limit) has lost the real error.
            self.violate(method, f"{code.name} WITHOUT ErrorInfo", details, given)

    def results(self, method: str, replies: list[pb.StepResult], given: Any) -> None:
        for result in replies:
            if result.HasField("error"):
                name = CODE_NAMES.get(result.error.code, f"CODE_{result.error.code}")
                self.counts[f"item {name}"] += 1
                if result.error.code not in CODE_NAMES or result.error.code in ITEM_FORBIDDEN:
                    self.violate(f"{method} item", name, result.error.message, given)
                elif not any(d.Is(ErrorInfo.DESCRIPTOR) for d in result.error.details):
                    self.violate(
                        f"{method} item", f"{name} WITHOUT ErrorInfo", result.error.message, given
                    )
            elif result.HasField("response"):
                self.counts["item OK"] += 1
                self.finite(f"{method} item", result.response, given)
            else:
                self.violate(f"{method} item", "EMPTY RESULT", "", given)

    # -- calls ----------------------------------------------------------------

    def unary(self, group: str, method: str, request: bytes, given: Any) -> None:
        call = self.channel.unary_unary(f"/seqinfer.v1.Seqinfer/{method}")
        try:
            reply = call(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            self.record(group, method, err.code(), err.details() or "", given, err)
            return
        self.record(group, method, grpc.StatusCode.OK, "", given)
        try:
            decoded = getattr(pb, RESPONSES[method]).FromString(reply)
        except Exception as exc:
            self.violate(method, "UNDECODABLE REPLY", type(exc).__name__, given)
            return
        if method == "StepMany":
            self.results(method, list(decoded.results), given)
        elif method in ("Step", "ExportState"):
            self.finite(method, decoded, given)

    def finite(self, method: str, reply: Any, given: Any) -> None:
        """An accepted step never hands back NaN/Inf: the models are finite, so such a
        value means non-finite input got past the check (e.g. float64 beyond float32)."""
        for name in ("outputs", "state"):
            if name not in reply.DESCRIPTOR.fields_by_name:
                continue
            tensor = getattr(reply, name)
            if tensor.data and not np.isfinite(from_tensor(tensor)).all():
                self.violate(method, f"NON-FINITE {name}", "", given)

    def stream(self, group: str, frames: list[bytes], given: Any) -> None:
        call = self.channel.stream_stream("/seqinfer.v1.Seqinfer/StreamSteps")
        replies: list[pb.StepResult] = []
        code, details, error = grpc.StatusCode.OK, "", None
        try:
            for raw in call(iter(frames), timeout=CALL_TIMEOUT):
                replies.append(pb.StepResult.FromString(raw))
        except grpc.RpcError as err:
            code, details, error = err.code(), err.details() or "", err
        self.record(group, fi.STREAM, code, details, given, error)
        self.results(fi.STREAM, replies, given)
        if code == grpc.StatusCode.OK and len(replies) != len(frames):
            self.violate(fi.STREAM, "MISSING REPLIES", f"{len(replies)} of {len(frames)}", given)

    # -- the checks after each property ---------------------------------------

    def check(self) -> None:
        """This property's violations (then forgotten), the server's health, the control."""
        seen, self.violations = self.violations, {}
        found = "\n".join(
            f"  {method}: {code}: {details!r}\n      e.g. {given}"
            for (method, code, details), given in sorted(seen.items())
        )
        assert not seen, f"{len(seen)} kinds of violation:\n{found}"
        health = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        api = pb_grpc.SeqinferStub(self.channel)
        after = api.ExportState(pb.ExportStateRequest(session_id=fi.CONTROL), timeout=CALL_TIMEOUT)
        assert after.session.step == self.control.session.step
        assert after.state.data == self.control.state.data
        assert after.state.shape == self.control.state.shape
        probe = pb.StepRequest(
            session_id="fuzz-probe", start=True, model="tiny", end=True,
            inputs=to_tensor(np.ones((1, fi.FEATURES), np.float32)),
        )  # fmt: skip
        assert api.Step(probe, timeout=CALL_TIMEOUT).step == 1


def _show(value: Any) -> str:
    """An input on one line, long runs abbreviated ("y" * 70000 as y*70000)."""
    if isinstance(value, Message):
        text = f"{type(value).__name__}({text_format.MessageToString(value, as_one_line=True)})"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = repr(value)
    return re.sub(
        r"(.{1,16}?)\1{7,}", lambda m: f"({m.group(1)})*{len(m.group(0)) // len(m.group(1))}", text
    )


def _has_error_info(error: grpc.RpcError) -> bool:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the trailer contradicts the call's code or message
        return False
    if status is None:
        return False
    for detail in status.details:
        if detail.Is(ErrorInfo.DESCRIPTOR):
            info = ErrorInfo()
            detail.Unpack(info)
            return info.domain == "seqinfer.v1" and bool(info.reason)
    return False


@pytest.fixture(scope="module")
def fuzz(request: pytest.FixtureRequest) -> Iterator[Fuzz]:
    models = [
        make_model("dense", name="tiny", input_size=fi.FEATURES, hidden=16, seed=11),
        make_model("tokens", name="tok", input_size=fi.VOCAB, hidden=16, seed=12),
    ]
    limits = {"max_timesteps": 100, "max_step_many": 16, "max_message_bytes": 256 * 1024}
    with running_server(models, **limits) as server, grpc.insecure_channel(server.address) as ch:
        api = pb_grpc.SeqinferStub(ch)
        api.OpenSession(
            pb.OpenSessionRequest(model="tiny", session_id=fi.CONTROL, idle_ttl_seconds=0)
        )
        x = np.linspace(-1, 1, 5 * fi.FEATURES, dtype=np.float32).reshape(5, fi.FEATURES)
        api.Step(pb.StepRequest(session_id=fi.CONTROL, inputs=to_tensor(x)))
        control = api.ExportState(pb.ExportStateRequest(session_id=fi.CONTROL))
        fuzz = Fuzz(server, ch, control)
        yield fuzz
    calls: Counter[str] = Counter()
    for key, n in fuzz.counts.items():
        group, code = key.split(" ")
        calls[f"{'results' if group == 'item' else 'calls'} {code}"] += n
    line = "; ".join(
        ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) for c in (calls, fuzz.counts)
    )
    note = f"seed {SEED}" if LONG else "fixed seed"
    # Shown past pytest's capture: the closing note reports these counts.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nfuzz outcomes by status code ({note}), all then by group: {line}"
            )


def test_raw_bytes_to_every_unary_method(fuzz: Fuzz) -> None:
    @_fuzz("raw_unary")
    @given(st.sampled_from(fi.UNARY).flatmap(lambda m: st.tuples(st.just(m), fi.raw_requests(m))))
    def prop(case: tuple[str, bytes]) -> None:
        method, data = case
        fuzz.unary("raw", method, data, case)

    prop()
    fuzz.check()


def test_raw_frames_on_a_stream(fuzz: Fuzz) -> None:
    @_fuzz("raw_stream")
    @given(fi.stream_frames)
    def prop(frames: list[bytes]) -> None:
        fuzz.stream("raw-stream", frames, frames)

    prop()
    fuzz.check()


def test_edge_values_through_the_generated_stubs(fuzz: Fuzz) -> None:
    @_fuzz("fields")
    @given(st.sampled_from(fi.UNARY).flatmap(lambda m: st.tuples(st.just(m), fi.REQUESTS[m])))
    def prop(case: tuple[str, Any]) -> None:
        method, message = case
        fuzz.unary("fields", method, message.SerializeToString(), case)

    prop()
    fuzz.check()


def test_edge_values_on_a_stream(fuzz: Fuzz) -> None:
    @_fuzz("stub_stream")
    @given(fi.stub_stream_requests)
    def prop(requests: list[pb.StepRequest]) -> None:
        fuzz.stream("fields-stream", [r.SerializeToString() for r in requests], requests)

    prop()
    fuzz.check()


def test_sessions_with_edge_counters_and_values(fuzz: Fuzz) -> None:
    @_fuzz("sessions")
    @given(fi.session_scenarios())
    def prop(calls: list[tuple[str, Any]]) -> None:
        for i, (method, message) in enumerate(calls):
            given = [calls[i], "after", *calls[:i]]  # the failing call first
            if method == fi.STREAM:
                fuzz.stream("sessions-stream", [r.SerializeToString() for r in message], given)
            else:
                fuzz.unary("sessions", method, message.SerializeToString(), given)

    prop()
    fuzz.check()
