"""Every kind of bad input gets a clear status naming the field; nothing else is disturbed.

A bystander session's state is exported before and after, and must be equal
bit for bit; the server must go on serving.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import error_reason, make_model, running_server, status_reason, stub, to_tensor

DENSE = make_model("dense", name="dense", seed=1)
TOKENS = make_model("tokens", name="tokens", input_size=30, seed=2)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def api():
    with (
        running_server(
            [DENSE, TOKENS], max_timesteps=100, max_message_bytes=64 * 1024, max_step_many=8
        ) as server,
        stub(server.address) as api,
    ):
        api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="bystander"))
        api.Step(
            pb.StepRequest(session_id="bystander", inputs=to_tensor(np.ones((5, 8), np.float32)))
        )
        api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="d"))
        api.OpenSession(pb.OpenSessionRequest(model="tokens", session_id="t"))
        before = api.ExportState(pb.ExportStateRequest(session_id="bystander"))
        yield api
        after = api.ExportState(pb.ExportStateRequest(session_id="bystander"))
        assert after.state.data == before.state.data and after.session.step == 5
        ok = api.Step(pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((1, 8), np.float32))))
        assert ok.step >= 1


def _raw(dtype: int, shape: list[int], nbytes: int) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=b"\0" * nbytes)


F32 = np.float32
CASES = {
    "unknown session": (
        pb.StepRequest(session_id="ghost", inputs=to_tensor(np.ones((1, 8), F32))),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
        None,
    ),
    "unknown model": (
        pb.StepRequest(
            session_id="n", start=True, model="nope", inputs=to_tensor(np.ones((1, 8), F32))
        ),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        None,
    ),
    "unknown version": (
        pb.StepRequest(
            session_id="n",
            start=True,
            model="dense",
            model_version="9",
            inputs=to_tensor(np.ones((1, 8), F32)),
        ),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        None,
    ),
    "int inputs for a dense model": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((1, 8), np.int32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.dtype",
    ),
    "float inputs for a token model": (
        pb.StepRequest(session_id="t", inputs=to_tensor(np.ones(3, F32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.dtype",
    ),
    "unspecified dtype": (
        pb.StepRequest(session_id="d", inputs=_raw(pb.DTYPE_UNSPECIFIED, [1, 8], 32)),
        INVALID,
        "INVALID_INPUT",
        "inputs.dtype",
    ),
    "wrong feature size": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((2, 7), F32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.shape",
    ),
    "1-D dense inputs": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones(8, F32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.shape",
    ),
    "2-D token inputs": (
        pb.StepRequest(session_id="t", inputs=to_tensor(np.ones((2, 2), np.int64))),
        INVALID,
        "INVALID_INPUT",
        "inputs.shape",
    ),
    "bytes do not match shape": (
        pb.StepRequest(session_id="d", inputs=_raw(pb.DTYPE_FLOAT32, [2, 8], 60)),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    ),
    "T = 0": (
        pb.StepRequest(session_id="d", inputs=_raw(pb.DTYPE_FLOAT32, [0, 8], 0)),
        INVALID,
        "INVALID_INPUT",
        "inputs.shape",
    ),
    "no inputs at all": (pb.StepRequest(session_id="d"), INVALID, "INVALID_INPUT", "inputs.dtype"),
    "T above the maximum": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((101, 8), F32))),
        INVALID,
        "TOO_LARGE",
        "inputs.shape",
    ),
    "token id above vocabulary": (
        pb.StepRequest(session_id="t", inputs=to_tensor(np.array([1, 30], np.int64))),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    ),
    "negative token id": (
        pb.StepRequest(session_id="t", inputs=to_tensor(np.array([-1], np.int32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    ),
    "NaN input": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.full((1, 8), np.nan, F32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    ),
    "Inf input": (
        pb.StepRequest(session_id="d", inputs=to_tensor(np.full((1, 8), np.inf, F32))),
        INVALID,
        "INVALID_INPUT",
        "inputs.data",
    ),
    "empty session id": (
        pb.StepRequest(session_id="", inputs=to_tensor(np.ones((1, 8), F32))),
        INVALID,
        "INVALID_INPUT",
        "session_id",
    ),
    "oversized session id": (
        pb.StepRequest(
            session_id="x" * 129, start=True, model="dense", inputs=to_tensor(np.ones((1, 8), F32))
        ),
        INVALID,
        "INVALID_INPUT",
        "session_id",
    ),
    "control characters in session id": (
        pb.StepRequest(
            session_id="a\nb", start=True, model="dense", inputs=to_tensor(np.ones((1, 8), F32))
        ),
        INVALID,
        "INVALID_INPUT",
        "session_id",
    ),
    "negative ttl": (
        pb.StepRequest(
            session_id="n2",
            start=True,
            model="dense",
            idle_ttl_seconds=-1,
            inputs=to_tensor(np.ones((1, 8), F32)),
        ),
        INVALID,
        "INVALID_INPUT",
        "idle_ttl_seconds",
    ),
    "unknown output mode": (
        pb.StepRequest(session_id="d", output_mode=99, inputs=to_tensor(np.ones((1, 8), F32))),
        INVALID,
        "INVALID_INPUT",
        "output_mode",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_step_request(api, case: str):
    request, code, reason, field = CASES[case]

    def open_sessions() -> int:
        return sum(m.open_sessions for m in api.ListModels(pb.ListModelsRequest()).models)

    open_before = open_sessions()
    with pytest.raises(grpc.RpcError) as info:
        api.Step(request)
    got = error_reason(info.value)
    assert got[:2] == (code, reason), info.value.details()
    if field is not None:
        assert got[2]["field"] == field
        assert info.value.details().startswith(field)
    # A refused implicit start leaves no session behind: none was opened, and
    # the id is unknown (or, when the id itself was the problem, still refused).
    if request.start:
        assert open_sessions() == open_before
        with pytest.raises(grpc.RpcError) as lookup:
            api.GetSession(pb.GetSessionRequest(session_id=request.session_id))
        if field == "session_id":
            assert error_reason(lookup.value)[:2] == (INVALID, "INVALID_INPUT")
        else:
            assert error_reason(lookup.value)[:2] == (
                grpc.StatusCode.NOT_FOUND,
                "SESSION_NOT_FOUND",
            )


@pytest.mark.parametrize(
    ("name", "call", "code", "reason", "field"),
    [
        (
            "initial state shape",
            lambda a: a.OpenSession(
                pb.OpenSessionRequest(
                    model="dense", initial_state=to_tensor(np.zeros((2, 15), F32))
                )
            ),
            INVALID,
            "INVALID_INPUT",
            "initial_state.shape",
        ),
        (
            "initial state NaN",
            lambda a: a.OpenSession(
                pb.OpenSessionRequest(
                    model="dense", initial_state=to_tensor(np.full((2, 16), np.nan, F32))
                )
            ),
            INVALID,
            "INVALID_INPUT",
            "initial_state.data",
        ),
        (
            "import wrong shape",
            lambda a: a.ImportState(
                pb.ImportStateRequest(session_id="d", state=to_tensor(np.zeros((1, 16), F32)))
            ),
            INVALID,
            "INVALID_INPUT",
            "state.shape",
        ),
        (
            "fork to an existing id",
            lambda a: a.ForkSession(pb.ForkSessionRequest(session_id="d", new_session_id="t")),
            grpc.StatusCode.ALREADY_EXISTS,
            "SESSION_EXISTS",
            None,
        ),
        (
            "StepMany over the limit",
            lambda a: a.StepMany(
                pb.StepManyRequest(
                    steps=[pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((1, 8), F32)))]
                    * 9
                )
            ),
            INVALID,
            "TOO_LARGE",
            "steps",
        ),
        (
            "get with empty id",
            lambda a: a.GetSession(pb.GetSessionRequest()),
            INVALID,
            "INVALID_INPUT",
            "session_id",
        ),
    ],
)
def test_bad_session_request(api, name, call, code, reason, field):
    with pytest.raises(grpc.RpcError) as info:
        call(api)
    got = error_reason(info.value)
    assert got[:2] == (code, reason), info.value.details()
    if field is not None:
        assert got[2]["field"] == field


def test_message_over_size_limit_is_resource_exhausted(api):
    big = np.ones((100, 8 * 30), F32)  # ~96 KB, over the 64 KB limit
    with pytest.raises(grpc.RpcError) as info:
        api.Step(pb.StepRequest(session_id="d", inputs=to_tensor(big)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_items_in_a_stream_get_error_replies_and_the_stream_goes_on(api):
    good = to_tensor(np.ones((1, 8), F32))
    requests = [
        pb.StepRequest(session_id="d", inputs=good, request_id="1"),
        pb.StepRequest(session_id="d", inputs=to_tensor(np.ones((1, 3), F32)), request_id="2"),
        pb.StepRequest(session_id="ghost", inputs=good, request_id="3"),
        pb.StepRequest(session_id="d", inputs=good, request_id="4"),
    ]
    results = list(api.StreamSteps(iter(requests)))
    assert [r.request_id for r in results if r.session_id == "d"] == ["1", "2", "4"]
    by_id = {r.request_id: r for r in results}
    assert by_id["1"].WhichOneof("outcome") == "response"
    assert status_reason(by_id["2"].error)[:2] == (INVALID.value[0], "INVALID_INPUT")
    assert status_reason(by_id["3"].error)[1] == "SESSION_NOT_FOUND"
    assert by_id["4"].response.step == by_id["1"].response.step + 1


def test_step_many_mixes_results_and_errors_in_order(api):
    good = to_tensor(np.ones((1, 8), F32))
    reply = api.StepMany(
        pb.StepManyRequest(
            steps=[
                pb.StepRequest(session_id="d", inputs=good, request_id="a"),
                pb.StepRequest(session_id="t", inputs=good, request_id="b"),
                pb.StepRequest(
                    session_id="t", inputs=to_tensor(np.array([3], np.int64)), request_id="c"
                ),
            ]
        )
    )
    assert [r.request_id for r in reply.results] == ["a", "b", "c"]
    assert [r.WhichOneof("outcome") for r in reply.results] == ["response", "error", "response"]
