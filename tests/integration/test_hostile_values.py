"""Values that turn non-finite in the model's dtype are refused, for every float dtype.

A finite float64 beyond float32's range reaches a float32 model as ±Inf and
fills the session's state with NaN for good; the same for float32 or
bfloat16 values beyond float16's range, and so on for every pair where the
wire dtype is wider than the model's. Inputs, initial states and imported
states are all checked, and the session that sent them is left as it was.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.integration.hostile import (
    INVALID,
    bf16_tensor,
    model_in,
    refused,
    state_of,
    watching,
)
from tests.support import running_server, stub, to_tensor

MODELS = [model_in(d, n, seed=3) for d, n in [("float32", "f32"), ("float16", "f16")]]
MODELS += [model_in(d, n, seed=3) for d, n in [("bfloat16", "bf16"), ("float64", "f64")]]
F16_MAX = float(np.finfo(np.float16).max)  # 65504
BF16_MAX = 3.3895313892515355e38
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def api():
    with running_server(MODELS, max_timesteps=64) as server, stub(server.address) as api:
        for model in ("f32", "f16", "bf16", "f64"):
            api.OpenSession(pb.OpenSessionRequest(model=model, session_id=model))
            api.Step(pb.StepRequest(session_id=model, inputs=to_tensor(np.ones((2, 8), "f4"))))
        yield api


@pytest.fixture(autouse=True)
def bystander(api):
    with watching(api, "f32", "bystander-values"):
        yield


def _tensor(wire: str, value: float, shape: list[int]) -> pb.Tensor:
    if wire == "bfloat16":
        return bf16_tensor(np.full(shape, value, np.float32), shape)
    return to_tensor(np.full(shape, value, wire))


# (model, wire dtype, value): finite on the wire, beyond the model dtype's range.
OVERFLOWING = [
    ("f32", "float64", 1e39),
    ("f32", "float64", -3.5e38),
    ("f32", "float64", 1e308),
    ("f16", "float32", 7e4),
    ("f16", "float64", 65520.0),
    ("f16", "float64", -1e5),
    ("f16", "bfloat16", 1e5),
    ("bf16", "float32", 3.4e38),
    ("bf16", "float64", 1e39),
]
NON_FINITE = [
    (model, wire, value)
    for model in ("f32", "f16")
    for wire in ("float32", "float64", "float16", "bfloat16")
    for value in (np.nan, np.inf, -np.inf)
]


@pytest.mark.parametrize(("model", "wire", "value"), OVERFLOWING + NON_FINITE)
def test_step_inputs_must_be_finite_in_the_models_dtype(api, model, wire, value):
    before = state_of(api, model)
    inputs = _tensor(wire, value, [1, 8])
    error = refused(
        lambda: api.Step(pb.StepRequest(session_id=model, inputs=inputs)),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    )
    assert "NaN" in error.details()
    assert state_of(api, model) == before  # nothing applied
    # One bad value among good ones is enough.
    mixed = np.ones((3, 8), np.float64)
    mixed[1, 5] = value
    with pytest.raises(grpc.RpcError):
        api.Step(pb.StepRequest(session_id=model, inputs=_tensor_like(wire, mixed)))
    assert state_of(api, model) == before


def _tensor_like(wire: str, values: np.ndarray) -> pb.Tensor:
    if wire == "bfloat16":
        return bf16_tensor(values.astype(np.float32), list(values.shape))
    return to_tensor(values.astype(wire))


@pytest.mark.parametrize(("model", "wire", "value"), OVERFLOWING + NON_FINITE)
def test_states_must_be_finite_in_the_models_dtype(api, model, wire, value):
    state = _tensor(wire, value, [2, 16])
    new_id = f"new-{model}-{wire}"
    refused(
        lambda: api.OpenSession(
            pb.OpenSessionRequest(model=model, session_id=new_id, initial_state=state)
        ),
        INVALID,
        "INVALID_INPUT",
        "initial_state.data",
    )
    refused(
        lambda: api.GetSession(pb.GetSessionRequest(session_id=new_id)),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    before = state_of(api, model)
    refused(
        lambda: api.ImportState(pb.ImportStateRequest(session_id=model, state=state)),
        INVALID,
        "INVALID_INPUT",
        "state.data",
    )
    refused(
        lambda: api.ImportState(
            pb.ImportStateRequest(session_id=new_id, state=state, create=True, model=model)
        ),
        INVALID,
        "INVALID_INPUT",
        "state.data",
    )
    assert state_of(api, model) == before


# (model, wire dtype, value): the largest values that do fit.
FITTING = [
    ("f32", "float64", -F32_MAX),
    ("f32", "float16", F16_MAX),
    ("f16", "float32", F16_MAX),
    ("f16", "float64", -F16_MAX),
    ("bf16", "float64", BF16_MAX),
    ("f64", "float64", 1e308),
    ("f64", "float32", F32_MAX),
]


@pytest.mark.parametrize(("model", "wire", "value"), FITTING)
def test_values_within_the_models_range_are_accepted(api, model, wire, value):
    session_id = f"fit-{model}-{wire}"
    api.OpenSession(pb.OpenSessionRequest(model=model, session_id=session_id))
    reply = api.Step(pb.StepRequest(session_id=session_id, inputs=_tensor(wire, value, [1, 8])))
    # Accepted; what the GRU then computes from such values (it may overflow
    # inside the model) is the caller's own session's business.
    assert reply.step == 1
    api.ImportState(pb.ImportStateRequest(session_id=session_id, state=_tensor(wire, 0.5, [2, 16])))
    api.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def test_allow_non_finite_inputs_still_accepts_them():
    with (
        running_server(MODELS[:2], allow_non_finite_inputs=True) as server,
        stub(server.address) as api,
    ):
        for model, wire, value in [("f32", "float64", 1e39), ("f16", "float32", np.nan)]:
            api.OpenSession(pb.OpenSessionRequest(model=model, session_id=model))
            reply = api.Step(pb.StepRequest(session_id=model, inputs=_tensor(wire, value, [1, 8])))
            assert reply.step == 1
