"""Bytes that are no valid message: INVALID_ARGUMENT, one short log line, streams go on.

grpc's own handling of a deserializer failure would answer UNKNOWN with the
exception's name, log a traceback per request, and end a stream at its first
bad frame. seqinfer's deserializers never raise (service/wire.py); this
checks every method over raw bytes, the log, and streams with bad frames.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest

from seqinfer.service import wire
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.integration.hostile import (
    FORBIDDEN,
    INVALID,
    SERVICE,
    ones,
    raw_unary,
    result_refused,
    state_of,
    watching,
)
from tests.support import error_reason, make_model, running_server, stub

TRUNCATED_VARINT = b"\x08\xff"  # field 1, a varint whose last byte is missing
BAD_WIRE_TYPE = b"\x0f"  # field 1 with wire type 7, which does not exist
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in these messages) not UTF-8
UNARY = [m.name for m in wire.SERVICE.methods if not m.client_streaming]
# Field 1 of ListModelsRequest does not exist: unknown fields are kept as bytes,
# never checked for UTF-8, so only the framing errors apply to it.
CASES = [(method, TRUNCATED_VARINT) for method in UNARY]
CASES += [(method, BAD_WIRE_TYPE) for method in UNARY]
CASES += [(method, BAD_UTF8) for method in UNARY if method not in ("ListModels", "StepMany")]
CASES += [("StepMany", b"\x0a\x04" + BAD_UTF8)]  # a StepRequest inside with a bad id


@pytest.fixture(scope="module")
def server():
    with running_server([make_model("dense", name="dense", seed=1)]) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def api(server):
    with stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="s"))
        yield api


@pytest.fixture(autouse=True)
def bystander(api):
    with watching(api, "dense", "bystander-wire"):
        yield


@pytest.fixture
def decode_log(monkeypatch):
    """The decode log's limiter with a fresh state and an interval no test outlasts."""
    limiter = wire._RateLimitedLog(3600)
    monkeypatch.setattr(wire, "_decode_log", limiter)
    return limiter


@pytest.mark.parametrize(("method", "data"), CASES)
def test_undecodable_requests_are_invalid_argument(channel, api, decode_log, method, data):
    before = state_of(api, "s")
    with pytest.raises(grpc.RpcError) as info:
        raw_unary(channel, method)(data, timeout=60)
    assert info.value.code() not in FORBIDDEN
    code, reason, metadata = error_reason(info.value)
    assert (code, reason, metadata["field"]) == (INVALID, "INVALID_INPUT", "request")
    assert f"{len(data)} bytes could not be decoded" in info.value.details()
    assert state_of(api, "s") == before


def test_a_flood_of_bad_messages_logs_one_line_without_a_traceback(channel, decode_log, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(50):
        with pytest.raises(grpc.RpcError):
            raw_unary(channel, "Step")(BAD_UTF8, timeout=60)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["seqinfer.service.wire"], [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and "Traceback" not in lines[0].getMessage()
    assert "String field had bad UTF-8" in lines[0].getMessage()
    assert decode_log.suppressed == 49


def test_the_next_line_after_the_interval_counts_what_it_suppressed(decode_log, caplog):
    caplog.set_level(logging.WARNING)
    decode_log.warning("first")
    decode_log.warning("second")
    decode_log.next_at = 0.0  # the interval has passed
    decode_log.warning("third")
    assert [r.getMessage() for r in caplog.records] == [
        "first",
        "third (1 more since the last report)",
    ]


def test_bad_frames_in_a_stream_cost_only_themselves(channel, api, decode_log):
    call = channel.stream_stream(
        SERVICE + "StreamSteps",
        request_serializer=None,
        response_deserializer=pb.StepResult.FromString,
    )
    api.OpenSession(pb.OpenSessionRequest(model="dense", session_id="frames"))

    def good(request_id: str) -> bytes:
        return pb.StepRequest(
            session_id="frames", inputs=ones(1), request_id=request_id
        ).SerializeToString()

    frames = [good("1"), BAD_UTF8, TRUNCATED_VARINT, good("2"), BAD_WIRE_TYPE, good("3")]
    results = list(call(iter(frames), timeout=60))
    assert len(results) == len(frames)
    errors = [r for r in results if r.WhichOneof("outcome") == "error"]
    assert len(errors) == 3
    for result in errors:
        # Nothing of a bad frame can be trusted, its ids included.
        assert (result.session_id, result.request_id) == ("", "")
        result_refused(result, INVALID, "INVALID_INPUT", "request")
    applied = [r for r in results if r.WhichOneof("outcome") == "response"]
    assert [(r.request_id, r.response.step) for r in applied] == [("1", 1), ("2", 2), ("3", 3)]
    api.CloseSession(pb.CloseSessionRequest(session_id="frames"))


def test_a_bad_step_inside_step_many_refuses_the_whole_message(channel, api, decode_log):
    before = state_of(api, "s")
    good = pb.StepRequest(session_id="s", inputs=ones(1)).SerializeToString()
    data = b"\x0a" + bytes([len(good)]) + good + b"\x0a\x04" + BAD_UTF8
    with pytest.raises(grpc.RpcError) as info:
        raw_unary(channel, "StepMany")(data, timeout=60)
    assert error_reason(info.value)[:2] == (INVALID, "INVALID_INPUT")
    assert state_of(api, "s") == before  # the good step in it was not applied
    ok = api.Step(pb.StepRequest(session_id="s", inputs=ones(1)))
    assert ok.step == before[1] + 1
    assert np.frombuffer(ok.outputs.data, np.float32).shape == (5,)
