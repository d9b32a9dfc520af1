"""Numbers at the edge of their wire type, and echoed values of any length.

Every client-supplied integer and double is bounded where the request comes
in (INVALID_ARGUMENT naming the field); a session's step counter can reach
its maximum (2^53 - 1) but never pass it, and a session there keeps working
for every call: a step gets STEP_LIMIT, fork, export and reset work. Error
messages and metadata quote what the caller sent cut short, so the real
error always arrives. Nothing here may answer INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.integration.hostile import (
    FORBIDDEN,
    INVALID,
    ones,
    raw_unary,
    refused,
    result_refused,
    state_of,
    watching,
)
from tests.support import error_reason, make_model, running_server, stub, to_tensor

MAX_STEP = 2**53 - 1
DENSE = make_model("dense", name="dense", seed=1)
TOKENS = make_model("tokens", name="tokens", input_size=30, seed=2)
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def server():
    with running_server([DENSE, TOKENS], max_timesteps=100) as server:
        yield server


@pytest.fixture(scope="module")
def api(server):
    with stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="d"))
        api.OpenSession(pb.OpenSessionRequest(model="tokens", session_id="t"))
        yield api


@pytest.fixture(autouse=True)
def bystander(api):
    with watching(api, "dense", "bystander-input"):
        yield


def _edge_session(api, session_id: str, step: int) -> None:
    api.ImportState(
        pb.ImportStateRequest(
            session_id=session_id,
            create=True,
            model="dense",
            state=to_tensor(np.full((2, 16), 0.25, np.float32)),
            step=step,
        )
    )


# ------------------------------------------------------------ counters --


@pytest.mark.parametrize("step", [2**64 - 1, 2**63, MAX_STEP + 1])
def test_import_step_beyond_the_maximum_is_refused(api, step):
    before = state_of(api, "d")
    state = to_tensor(np.zeros((2, 16), np.float32))
    request = pb.ImportStateRequest(session_id="d", state=state, step=step)
    refused(lambda: api.ImportState(request), INVALID, "INVALID_INPUT", "step")
    assert state_of(api, "d") == before
    create = pb.ImportStateRequest(session_id="new", state=state, step=step, create=True)
    refused(lambda: api.ImportState(create), INVALID, "INVALID_INPUT", "step")
    refused(
        lambda: api.GetSession(pb.GetSessionRequest(session_id="new")),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


def test_a_session_at_the_maximum_step_refuses_steps_and_keeps_working(api):
    _edge_session(api, "edge", MAX_STEP - 2)
    assert api.Step(pb.StepRequest(session_id="edge", inputs=ones(2))).step == MAX_STEP
    before = state_of(api, "edge")
    error = refused(
        lambda: api.Step(pb.StepRequest(session_id="edge", inputs=ones(1))),
        PRECONDITION,
        "STEP_LIMIT",
    )
    assert error_reason(error)[2]["current_step"] == str(MAX_STEP)
    assert str(MAX_STEP) in error.details()
    refused(
        lambda: api.Step(pb.StepRequest(session_id="edge", inputs=ones(1), expected_step=MAX_STEP)),
        PRECONDITION,
        "STEP_LIMIT",
    )
    assert state_of(api, "edge") == before
    assert api.GetSession(pb.GetSessionRequest(session_id="edge")).step == MAX_STEP
    copy = api.ForkSession(pb.ForkSessionRequest(session_id="edge", new_session_id="edge-copy"))
    assert copy.step == MAX_STEP
    assert state_of(api, "edge-copy") == before
    # StepMany: the refused item is one error; the others are applied and answered.
    reply = api.StepMany(
        pb.StepManyRequest(
            steps=[
                pb.StepRequest(session_id="edge", inputs=ones(1), request_id="a"),
                pb.StepRequest(session_id="edge-copy", inputs=ones(1), reset=True, request_id="b"),
                pb.StepRequest(session_id="d", inputs=ones(1), request_id="c"),
            ]
        )
    )
    result_refused(reply.results[0], PRECONDITION, "STEP_LIMIT")
    assert reply.results[1].response.step == 1
    assert reply.results[2].WhichOneof("outcome") == "response"
    # A stream answers every item and ends.
    results = list(
        api.StreamSteps(
            iter(
                [
                    pb.StepRequest(session_id="edge", inputs=ones(1), request_id="1"),
                    pb.StepRequest(session_id="edge", inputs=ones(3), reset=True, request_id="2"),
                    pb.StepRequest(session_id="edge", inputs=ones(1), request_id="3"),
                ]
            ),
            timeout=60,
        )
    )
    assert [r.request_id for r in results] == ["1", "2", "3"]
    result_refused(results[0], PRECONDITION, "STEP_LIMIT")
    assert [r.response.step for r in results[1:]] == [3, 4]
    for session_id in ("edge", "edge-copy"):
        api.CloseSession(pb.CloseSessionRequest(session_id=session_id))


@pytest.mark.parametrize("value", [2**64 - 1, MAX_STEP + 1])
def test_expected_step_beyond_the_maximum_is_refused(api, value):
    request = pb.StepRequest(session_id="d", inputs=ones(1), expected_step=value, request_id="x")
    refused(lambda: api.Step(request), INVALID, "INVALID_INPUT", "expected_step")
    (result,) = list(api.StreamSteps(iter([request]), timeout=60))
    result_refused(result, INVALID, "INVALID_INPUT", "expected_step")
    (result,) = api.StepMany(pb.StepManyRequest(steps=[request])).results
    result_refused(result, INVALID, "INVALID_INPUT", "expected_step")


# ----------------------------------------------------- shapes and enums --

I64_MAX, I64_MIN = 2**63 - 1, -(2**63)
BAD_SHAPES = {
    "dense": [[-1, 8], [I64_MAX, 8], [I64_MIN, 8], [1, I64_MAX], [1, -8], [1, 8, 1], [], [8]],
    "tokens": [[-5], [I64_MAX], [I64_MIN], [0], [2, 2], []],
}


@pytest.mark.parametrize(
    ("session_id", "shape"), [(s, shape) for s, shapes in BAD_SHAPES.items() for shape in shapes]
)
def test_shape_dims_at_the_edges_are_refused(api, session_id, shape):
    sid = session_id[0]
    dtype = pb.DTYPE_FLOAT32 if sid == "d" else pb.DTYPE_INT64
    inputs = pb.Tensor(dtype=dtype, shape=shape, data=b"\0" * 32)
    with pytest.raises(grpc.RpcError) as info:
        api.Step(pb.StepRequest(session_id=sid, inputs=inputs))
    code, reason, metadata = error_reason(info.value)
    assert code == INVALID and reason in ("INVALID_INPUT", "TOO_LARGE"), info.value.details()
    assert metadata["field"] == "inputs.shape"


def refused_any(call, field: str):
    """INVALID_ARGUMENT naming ``field``, with reason INVALID_INPUT or TOO_LARGE."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    code, reason, metadata = error_reason(info.value)
    assert (code, metadata.get("field")) == (INVALID, field), info.value.details()
    assert reason in ("INVALID_INPUT", "TOO_LARGE")
    return info.value


def test_hostile_state_shapes_are_refused_with_a_short_message(api):
    for shape in ([2, -16], [2**62, 2**62], [1] * 100_000, [-(2**63)] * 3):
        state = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=shape)
        open_request = pb.OpenSessionRequest(model="dense", initial_state=state)
        error = refused_any(lambda r=open_request: api.OpenSession(r), "initial_state.shape")
        assert len(error.details().encode()) <= 512
        import_request = pb.ImportStateRequest(session_id="d", state=state)
        refused_any(lambda r=import_request: api.ImportState(r), "state.shape")


@pytest.mark.parametrize("dtype", [99, -1, 2**31 - 1, -(2**31), pb.DTYPE_UNSPECIFIED])
def test_unknown_dtype_numbers_are_refused(api, dtype):
    inputs = pb.Tensor(dtype=dtype, shape=[1, 8], data=b"\0" * 32)
    refused(
        lambda: api.Step(pb.StepRequest(session_id="d", inputs=inputs)),
        INVALID,
        "INVALID_INPUT",
        "inputs.dtype",
    )
    state = pb.Tensor(dtype=dtype, shape=[2, 16], data=b"\0" * 128)
    refused(
        lambda: api.ImportState(pb.ImportStateRequest(session_id="d", state=state)),
        INVALID,
        "INVALID_INPUT",
        "state.dtype",
    )


def test_an_enum_varint_wider_than_int32_is_refused(server):
    # Tensor.dtype = 2^40 + 99 as a raw varint, which no protobuf library
    # writes for an enum. Protobuf reads it as the int32 99 (its low bits).
    varint = bytes([0xE3, 0x80, 0x80, 0x80, 0x80, 0x20])
    tensor = b"\x08" + varint + b"\x12\x02\x01\x08" + b"\x1a\x20" + b"\0" * 32
    request = b"\x0a\x01d" + b"\x12" + bytes([len(tensor)]) + tensor
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            raw_unary(channel, "Step")(request, timeout=60)
    assert error_reason(info.value) == (INVALID, "INVALID_INPUT", {"field": "inputs.dtype"})


@pytest.mark.parametrize("mode", [4, -1, 2**31 - 1])
def test_unknown_output_modes_are_refused(api, mode):
    request = pb.StepRequest(session_id="d", inputs=ones(1), output_mode=mode)
    refused(lambda: api.Step(request), INVALID, "INVALID_INPUT", "output_mode")


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), float("-inf"), -1.0, 1e300, 1.5e9])
def test_idle_ttls_out_of_range_are_refused(api, ttl):
    field = "idle_ttl_seconds"
    refused(
        lambda: api.OpenSession(pb.OpenSessionRequest(model="dense", idle_ttl_seconds=ttl)),
        INVALID,
        "INVALID_INPUT",
        field,
    )
    start = pb.StepRequest(
        session_id="ttl", start=True, model="dense", inputs=ones(1), idle_ttl_seconds=ttl
    )
    refused(lambda: api.Step(start), INVALID, "INVALID_INPUT", field)
    fork = pb.ForkSessionRequest(session_id="d", new_session_id="ttl", idle_ttl_seconds=ttl)
    refused(lambda: api.ForkSession(fork), INVALID, "INVALID_INPUT", field)
    refused(
        lambda: api.GetSession(pb.GetSessionRequest(session_id="ttl")),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


def test_the_longest_idle_ttl_is_accepted(api):
    info = api.OpenSession(pb.OpenSessionRequest(model="dense", idle_ttl_seconds=1e9))
    assert info.idle_ttl_seconds == 1e9
    api.CloseSession(pb.CloseSessionRequest(session_id=info.session_id))


@pytest.mark.parametrize(
    "ids", [np.array([I64_MAX], "i8"), np.array([I64_MIN], "i8"), np.array([-(2**31)], "i4")]
)
def test_token_ids_at_the_edges_of_their_type_are_refused(api, ids):
    before = state_of(api, "t")
    refused(
        lambda: api.Step(pb.StepRequest(session_id="t", inputs=to_tensor(ids))),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    )
    assert state_of(api, "t") == before


def test_request_ids_are_bounded(api):
    ok = api.Step(pb.StepRequest(session_id="d", inputs=ones(1), request_id="r" * 128))
    assert ok.request_id == "r" * 128
    long = pb.StepRequest(session_id="d", inputs=ones(1), request_id="é" * 100_000)
    refused(lambda: api.Step(long), INVALID, "INVALID_INPUT", "request_id")
    (result,) = list(api.StreamSteps(iter([long]), timeout=60))
    result_refused(result, INVALID, "INVALID_INPUT", "request_id")
    assert len(result.request_id.encode()) <= 128 and result.request_id.startswith("é")


# -------------------------------------------------------------- echoes --

LONG = "m" * 200_000
WIDE = "é" * 100_000  # two bytes each


def _bounded(error: grpc.RpcError) -> None:
    assert error.code() not in FORBIDDEN
    assert len(error.details().encode()) <= 512
    trailers = sum(len(k) + len(v) for k, v in error.trailing_metadata() or ())
    assert trailers < 4096, trailers
    _, _, metadata = error_reason(error)  # the real error arrived, with its ErrorInfo
    assert all(len(value.encode()) <= 128 for value in metadata.values())


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.GetModel(pb.GetModelRequest(name=LONG)),
        lambda a: a.GetModel(pb.GetModelRequest(name=WIDE)),
        lambda a: a.GetModel(pb.GetModelRequest(name="dense", version=WIDE)),
        lambda a: a.OpenSession(pb.OpenSessionRequest(model=LONG)),
        lambda a: a.OpenSession(pb.OpenSessionRequest(model="dense", model_version=LONG)),
        lambda a: a.OpenSession(pb.OpenSessionRequest(model="dense", session_id=WIDE)),
        lambda a: a.GetSession(pb.GetSessionRequest(session_id=LONG)),
        lambda a: a.ForkSession(pb.ForkSessionRequest(session_id="d", new_session_id=WIDE)),
        lambda a: a.Step(pb.StepRequest(session_id="s", start=True, model=WIDE, inputs=ones())),
        lambda a: a.ImportState(
            pb.ImportStateRequest(
                session_id="s", create=True, model=LONG, state=to_tensor(np.zeros((2, 16), "f4"))
            )
        ),
    ],
)
def test_errors_quote_long_values_cut_short(api, call):
    with pytest.raises(grpc.RpcError) as info:
        call(api)
    _bounded(info.value)


def test_stream_and_step_many_errors_quote_long_values_cut_short(api):
    request = pb.StepRequest(session_id="s", start=True, model=LONG, inputs=ones())
    for result in [
        *api.StreamSteps(iter([request]), timeout=60),
        *api.StepMany(pb.StepManyRequest(steps=[request])).results,
    ]:
        result_refused(result, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
        assert len(result.error.SerializeToString()) <= 1024
