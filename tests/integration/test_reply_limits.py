"""Replies that could not be sent are refused before anything is applied; every item is answered.

gRPC refuses to send a message over ``max_message_bytes``. A request under
the limit can ask for a reply over it (T timesteps of a large output, or the
state); seqinfer refuses it with TOO_LARGE before applying it, for Step,
each stream item, StepMany as a whole and ExportState. A retried request's
cached reply that no longer fits comes back TOO_LARGE (a replay applies
nothing). A fault while encoding one result costs only that result.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from seqinfer.service import inputs, results
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.integration.hostile import INVALID, ones, refused, result_refused, state_of, watching
from tests.support import error_reason, make_model, running_server, stub, to_tensor

LIMIT = 64 * 1024
# 1000 float32 outputs per timestep: 4000 bytes of reply for 4 bytes of request.
VOCAB = make_model("tokens", name="vocab", input_size=30, output=1000, seed=4)
DENSE = make_model("dense", name="dense", seed=1)
ALL, NONE = pb.OUTPUT_MODE_ALL, pb.OUTPUT_MODE_NONE


def tokens(t: int) -> pb.Tensor:
    return to_tensor(np.arange(t, dtype=np.int32) % 30)


@pytest.fixture(scope="module")
def api():
    with (
        running_server([VOCAB, DENSE], max_message_bytes=LIMIT, max_timesteps=64) as server,
        stub(server.address) as api,
    ):
        yield api


@pytest.fixture(autouse=True)
def bystander(api):
    with watching(api, "dense", "bystander-replies"):
        yield


@pytest.fixture
def vocab_sessions(api):
    ids = [f"v{i}" for i in range(20)]
    for session_id in ids:
        api.OpenSession(pb.OpenSessionRequest(model="vocab", session_id=session_id))
    yield ids
    for session_id in ids:
        api.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def test_a_step_whose_reply_would_not_fit_is_refused_unapplied(api, vocab_sessions):
    big = pb.StepRequest(session_id="v0", inputs=tokens(17), output_mode=ALL, request_id="r")
    assert big.ByteSize() < 200  # the request itself is tiny
    before = state_of(api, "v0")
    for _ in range(2):  # and a retry gets the same answer, never a half-applied step
        error = refused(lambda: api.Step(big), INVALID, "TOO_LARGE", "reply")
        metadata = error_reason(error)[2]
        assert int(metadata["reply_bytes"]) > LIMIT and metadata["max_message_bytes"] == str(LIMIT)
        assert metadata["reply_bytes"] in error.details() and str(LIMIT) in error.details()
        assert state_of(api, "v0") == before
    fits = api.Step(pb.StepRequest(session_id="v0", inputs=tokens(15), output_mode=ALL))
    assert list(fits.outputs.shape) == [15, 1000]
    last = api.Step(pb.StepRequest(session_id="v0", inputs=tokens(17)))
    assert list(last.outputs.shape) == [1000] and last.step == 32


def test_a_stream_item_whose_reply_would_not_fit_gets_an_error_and_the_stream_goes_on(
    api, vocab_sessions
):
    requests = [
        pb.StepRequest(session_id="v1", inputs=tokens(17), output_mode=ALL, request_id="a"),
        pb.StepRequest(session_id="v1", inputs=tokens(1), request_id="b"),
    ]
    first, second = api.StreamSteps(iter(requests), timeout=60)
    result_refused(first, INVALID, "TOO_LARGE", "reply")
    assert second.response.step == 1


def test_step_many_whose_results_would_not_fit_is_refused_as_a_whole(api, vocab_sessions):
    steps = [
        pb.StepRequest(session_id=s, inputs=tokens(1), output_mode=ALL) for s in vocab_sessions
    ]
    refused(lambda: api.StepMany(pb.StepManyRequest(steps=steps)), INVALID, "TOO_LARGE", "reply")
    assert all(state_of(api, s)[1] == 0 for s in vocab_sessions)  # nothing applied
    reply = api.StepMany(pb.StepManyRequest(steps=steps[:10]))
    assert [r.response.step for r in reply.results] == [1] * 10


def test_a_replay_larger_than_its_estimate_becomes_too_large_and_the_rest_arrive(
    api, vocab_sessions
):
    original = pb.StepRequest(session_id="v2", inputs=tokens(15), output_mode=ALL, request_id="x")
    retry = pb.StepRequest(
        session_id="v2", inputs=tokens(1), output_mode=NONE, request_id="x", expected_step=0
    )
    # The retry asks for no outputs, but a retry gets the original's reply.
    applied, replayed = api.StepMany(pb.StepManyRequest(steps=[original, retry])).results
    assert list(applied.response.outputs.shape) == [15, 1000]
    result_refused(replayed, INVALID, "TOO_LARGE")
    assert state_of(api, "v2")[1] == 15
    # Beside others that fit: only the replay becomes TOO_LARGE, the rest arrive.
    others = [pb.StepRequest(session_id=s, inputs=tokens(1), output_mode=ALL) for s in ("v3", "v4")]
    first, *rest = api.StepMany(pb.StepManyRequest(steps=[retry, *others])).results
    result_refused(first, INVALID, "TOO_LARGE")
    assert [r.response.step for r in rest] == [1, 1]
    (alone,) = api.StepMany(pb.StepManyRequest(steps=[retry])).results
    assert alone.response.replayed and list(alone.response.outputs.shape) == [15, 1000]
    assert api.Step(retry).replayed


def test_an_empty_step_many_is_valid_and_has_no_results(api):
    reply = api.StepMany(pb.StepManyRequest(), timeout=60)
    assert len(reply.results) == 0


@pytest.fixture
def poisoned(monkeypatch):
    """Encoding a result of session "poison" fails, as a server bug would."""
    fill = results.fill_response

    def fill_response(response, outcome):
        if outcome.session_id == "poison":
            raise RuntimeError("injected encoding fault")
        return fill(response, outcome)

    monkeypatch.setattr(results, "fill_response", fill_response)


def test_an_encoding_fault_costs_only_its_own_result(api, poisoned):
    api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="poison"))
    api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="healthy"))
    steps = [
        pb.StepRequest(session_id="healthy", inputs=ones(1), request_id="1"),
        pb.StepRequest(session_id="poison", inputs=ones(1), request_id="2"),
        pb.StepRequest(session_id="healthy", inputs=ones(1), request_id="3"),
    ]
    reply = api.StepMany(pb.StepManyRequest(steps=steps), timeout=60)
    assert [r.request_id for r in reply.results] == ["1", "2", "3"]
    result_refused(reply.results[1], grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert [reply.results[i].response.step for i in (0, 2)] == [1, 2]
    streamed = {r.request_id: r for r in api.StreamSteps(iter(steps), timeout=60)}
    assert sorted(streamed) == ["1", "2", "3"]
    result_refused(streamed["2"], grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert streamed["3"].response.step == 4
    for session_id in ("poison", "healthy"):
        api.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def test_a_fault_while_accepting_one_stream_item_does_not_end_the_stream(api, monkeypatch):
    check = inputs.step_inputs

    def step_inputs(spec, tensor, **kwargs):
        if list(tensor.shape) == [3, 8]:
            raise RuntimeError("injected fault")
        return check(spec, tensor, **kwargs)

    monkeypatch.setattr(inputs, "step_inputs", step_inputs)
    api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="faulty"))
    requests = [
        pb.StepRequest(session_id="faulty", inputs=ones(3), request_id="1"),
        pb.StepRequest(session_id="faulty", inputs=ones(1), request_id="2"),
    ]
    first, second = api.StreamSteps(iter(requests), timeout=60)
    result_refused(first, grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert second.response.step == 1
    api.CloseSession(pb.CloseSessionRequest(session_id="faulty"))


def test_state_replies_over_the_limit_are_refused():
    # 2 layers x 512 float32 = 4096 bytes of state: over a 4 KiB limit once framed.
    wide = make_model("dense", name="wide", hidden=512, seed=5)
    with (
        running_server([wide], max_message_bytes=4096) as server,
        stub(server.address) as api,
    ):
        api.OpenSession(pb.OpenSessionRequest(model="wide", session_id="w"))
        step = pb.StepRequest(session_id="w", inputs=ones(1), return_state=True)
        refused(lambda: api.Step(step), INVALID, "TOO_LARGE", "reply")
        refused(
            lambda: api.StepMany(pb.StepManyRequest(steps=[step])), INVALID, "TOO_LARGE", "reply"
        )
        refused(
            lambda: api.ExportState(pb.ExportStateRequest(session_id="w")),
            INVALID,
            "TOO_LARGE",
            "reply",
        )
        assert api.Step(pb.StepRequest(session_id="w", inputs=ones(1))).step == 1
