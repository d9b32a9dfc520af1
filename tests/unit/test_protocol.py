"""The seam's messages are plain data: typed fields of plain types, and they cross a process.

``protocol`` promises that a second ``EngineClient`` can carry its commands
and replies between processes unchanged. Two checks hold it to that: every
field's declared type is built from plain types only (no futures, callbacks
or engine objects can be declared), and a sample of every message survives
pickling, the way a multi-process client would carry them, errors included.
"""

from __future__ import annotations

import dataclasses
import pickle
import types
import typing
from collections.abc import Sequence

import numpy as np
import pytest

from seqinfer.service import errors, protocol

PLAIN = (str, int, float, bool, bytes, type(None), np.ndarray)
MESSAGES = [
    cls
    for cls in vars(protocol).values()
    if isinstance(cls, type)
    and dataclasses.is_dataclass(cls)
    and cls.__module__ == protocol.__name__
]


def _plain(annotation: object) -> bool:
    if annotation in PLAIN or annotation in MESSAGES:
        return True
    if isinstance(annotation, type) and issubclass(annotation, errors.SeqinferError):
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence, typing.Union, types.UnionType, dict):
        return all(_plain(arg) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    return False


def test_the_seam_has_the_messages_the_design_names():
    names = {cls.__name__ for cls in MESSAGES}
    commands = {"StepCommand", "StepBatch", "OpenCommand", "ForkCommand", "ImportCommand"}
    replies = {"StepOutcome", "StepBatchReply", "SessionInfo", "ExportReply", "ModelInfo"}
    assert commands | replies | {"TensorData"} <= names


@pytest.mark.parametrize("message", MESSAGES, ids=lambda cls: cls.__name__)
def test_every_field_is_plain_data(message):
    hints = typing.get_type_hints(message, vars(protocol))
    for field in dataclasses.fields(message):
        assert _plain(hints[field.name]), f"{message.__name__}.{field.name}: {hints[field.name]}"


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, errors.SeqinferError):
        return (
            type(a) is type(b)
            and (a.reason, a.message, a.metadata) == (b.reason, b.message, b.metadata)  # type: ignore[attr-defined]
            and getattr(a, "field", None) == getattr(b, "field", None)
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _samples() -> list[object]:
    tensor = protocol.TensorData(1, [1, 8], np.ones((1, 8), np.float32).tobytes())
    info = protocol.SessionInfo("s", "m", "1", 7, 1.5, 2.5, 0.0)
    outcome = protocol.StepOutcome(
        "s", "r", 3, np.arange(5, dtype=np.float32), np.zeros((2, 4), np.float16), created=True
    )
    return [
        tensor,
        protocol.StepCommand("s", "r", tensor, start=True, idle_ttl=3.0, expected_step=2),
        protocol.StepBatch(
            ["a", "b"],
            ["", "r"],
            ["m", ""],
            ["", ""],
            [True, False],
            [None, 1.0],
            [None, 4],
            [False, True],
            [False, False],
            [0, 2],
            [False, True],
            [1, 1],
            [[1, 8], [2, 8]],
            [b"\0" * 32, b"\0" * 64],
            deadline=12.5,
            wire_bytes=200,
        ),
        outcome,
        protocol.StepBatchReply(
            [
                outcome,
                errors.InvalidInput("inputs.shape", "bad", got="[3]"),
                errors.StepGap("expected 1, at 2", current_step=2),
                errors.internal(RuntimeError("/secret/path")),
            ]
        ),
        protocol.OpenCommand("m", "", "s", None, tensor),
        protocol.ForkCommand("s", "t", 5.0),
        protocol.ImportCommand("s", tensor, 9, True, "m", "1"),
        info,
        protocol.ExportReply(info, tensor),
        protocol.ModelInfo(
            "m", "1", "dense", 8, 16, 2, "logits", 5, 1, "cpu", "", 4096, 10, 1, 128
        ),
    ]


@pytest.mark.parametrize("message", _samples(), ids=lambda m: type(m).__name__)
def test_messages_survive_a_process_boundary(message):
    assert _same(pickle.loads(pickle.dumps(message)), message)


def test_an_error_crosses_as_its_plain_values():
    error = errors.TooLarge("reply", "x" * 10_000, reply_bytes=5)
    rebuilt = errors.rebuild(error.reason, error.message, error.metadata)
    assert type(rebuilt) is errors.TooLarge and rebuilt.field == "reply"
    assert str(rebuilt) == error.message and len(error.message.encode()) <= errors.MAX_MESSAGE_BYTES
    assert type(errors.rebuild("INTERNAL_ERROR", "m", {})) is errors.InternalError
    assert type(errors.rebuild("NOT_A_REASON", "m", {})) is errors.SeqinferError


def test_the_steps_envelope_crosses_as_msgpack_with_every_field():
    from seqinfer.service import ipc
    from seqinfer.v1 import seqinfer_pb2 as pb

    request = pb.StepRequest()
    request.inputs.shape.extend([3, 8])  # in process, a shape is the request's repeated field
    tensor = protocol.TensorData(pb.DTYPE_FLOAT32, request.inputs.shape, b"\1" * 96)
    steps = [
        (0, protocol.StepCommand("s", "r", tensor)),
        (
            2**40,
            protocol.StepCommand(
                "ünï", "", protocol.TensorData(pb.DTYPE_INT32, [5], b"\0" * 20), "m", "2",
                start=True, idle_ttl=0.5, expected_step=2**53 - 1, reset=True, end=True,
                output_mode=2, return_state=True, deadline=123.25, tenant="acme",
            ),
        ),
    ]  # fmt: skip
    frame = ipc.encode_steps(steps)
    assert frame[:1] != pickle.dumps(None, protocol=5)[:1]
    kind, back = ipc.decode(frame)
    assert kind == "steps"
    assert back[0][1].inputs.shape == [3, 8]
    expected = [
        (0, dataclasses.replace(steps[0][1], inputs=dataclasses.replace(tensor, shape=[3, 8])))
    ]
    assert _same(back, expected + steps[1:])
    # Every other envelope still crosses pickled through the same decode.
    assert ipc.decode(ipc.encode(("cancel", [1, 2]))) == ("cancel", [1, 2])


def test_a_malformed_steps_frame_is_refused_whole():
    import msgspec

    from seqinfer.service import ipc

    bad = b"\x01" + msgspec.msgpack.encode([(1, {"session_id": 5})])
    with pytest.raises(msgspec.ValidationError):
        ipc.decode(bad)
