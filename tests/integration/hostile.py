"""What the hostile-input tests share: models in every dtype, a bystander, raw calls.

A hostile client does not use seqinfer's client library: it sends protobuf
messages through raw stubs, or bytes that are no protobuf at all. The
bystander is a session no test touches; after each test its state and step
must be what they were, bit for bit, and the server must still step it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np

from seqinfer.service.models.spec import LoadedModel
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import error_reason, make_model, status_reason, to_tensor

SERVICE = "/seqinfer.v1.Seqinfer/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Statuses no caller may ever cause.
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def model_in(dtype: str, name: str, **kwargs: Any) -> LoadedModel:
    """A small dense model whose weights, state and compute are in ``dtype``."""
    base = make_model("dense", name=name, **kwargs)
    spec = dataclasses.replace(base.spec, dtype=dtype)
    return LoadedModel(spec, {k: v.to(spec.torch_dtype) for k, v in base.tensors.items()})


def bf16_tensor(values: Any, shape: list[int]) -> pb.Tensor:
    """bfloat16 bytes: the top half of each float32, truncated (exact for the values used)."""
    bits = np.asarray(values, np.float32).reshape(-1).view(np.uint32) >> 16
    return pb.Tensor(dtype=pb.DTYPE_BFLOAT16, shape=shape, data=bits.astype("<u2").tobytes())


def ones(t: int = 1, features: int = 8) -> pb.Tensor:
    return to_tensor(np.ones((t, features), np.float32))


class Bystander:
    """A session that must come out of every test exactly as it went in."""

    def __init__(self, api: pb_grpc.SeqinferStub, model: str, session_id: str = "bystander"):
        self.api = api
        self.session_id = session_id
        api.OpenSession(pb.OpenSessionRequest(model=model, session_id=session_id))
        api.Step(
            pb.StepRequest(
                session_id=session_id,
                inputs=to_tensor(np.linspace(-1, 1, 5 * 8, dtype=np.float32).reshape(5, 8)),
            )
        )
        self.before = api.ExportState(pb.ExportStateRequest(session_id=session_id))

    def check(self) -> None:
        after = self.api.ExportState(pb.ExportStateRequest(session_id=self.session_id))
        assert after.state.data == self.before.state.data, "the bystander's state changed"
        assert after.session.step == self.before.session.step == 5


@contextmanager
def watching(api: pb_grpc.SeqinferStub, model: str, session_id: str) -> Iterator[Bystander]:
    """A bystander for the block: checked bit for bit at its end, then closed."""
    watcher = Bystander(api, model, session_id)
    yield watcher
    watcher.check()
    api.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def raw_unary(channel: grpc.Channel, method: str) -> Any:
    """A unary call that sends bytes as they are and returns the reply's bytes."""
    return channel.unary_unary(
        SERVICE + method, request_serializer=None, response_deserializer=None
    )


def state_of(api: pb_grpc.SeqinferStub, session_id: str) -> tuple[bytes, int]:
    reply = api.ExportState(pb.ExportStateRequest(session_id=session_id))
    return reply.state.data, reply.session.step


def refused(call: Any, code: grpc.StatusCode, reason: str, field: str | None = None) -> Any:
    """Run a call that must fail with ``code``/``reason`` (and ``field``); the error."""
    try:
        call()
    except grpc.RpcError as error:
        got = error_reason(error)
        assert got[:2] == (code, reason), f"{got[:2]}: {error.details()}"
        if field is not None:
            assert got[2].get("field") == field, (got[2], error.details())
        return error
    raise AssertionError("the call succeeded")


def result_refused(result: pb.StepResult, code: grpc.StatusCode, reason: str, field: str = ""):
    assert result.WhichOneof("outcome") == "error", result
    got = status_reason(result.error)
    assert got[:2] == (code.value[0], reason), result.error.message
    if field:
        assert got[2].get("field") == field, result.error
