"""Front-end processes ⇄ the engine process: the envelopes, over ZeroMQ ``ipc://``.

One DEALER socket per front end, one ROUTER in the engine. Envelopes:

- front → engine: ``("steps", [(seq, StepCommand), ...])``, every step a front
  end decoded in one event-loop turn, coalesced into one message, because one
  IPC message per request would saturate the engine's core long before the
  front ends do; and ``("call", seq, method, args)`` for every other command
  (``CALLS``); ``("cancel", [seq, ...])``, the steps whose callers went
  away, sent after the steps they recall (never answered); and
  ``("metrics", frontend_index, snapshot, tenants)`` about once a
  second and at shutdown, the front end's gRPC counters (and its calls by
  tenant, with ``metrics_tenant_label``) as plain data
  (``metrics.frontends``), which the engine keeps for its exporter and
  never answers;
- engine → front: ``("replies", [(seq, reply), ...])``, every reply the
  engine finished in one loop turn; a reply is the command's result or the
  ``SeqinferError`` that refused it.

The ``steps`` envelope, the one sent for every request, is msgspec
msgpack decoded straight into ``StepCommand``s (typed, so a malformed
frame is refused whole): about 1.8 µs per command to encode and decode
against 6 µs pickled (``python -m benchmarks.ipc_codecs``), and the
decoding half of that is the engine's, whose core every front end shares.
Everything else is pickled (protocol 5): replies carry numpy arrays and
errors, calls are rare, and there msgspec measured no clear gain. A frame
says which by its first byte (pickle's begins with 0x80). Both ends are
this package at the same version, started together by ``seqinfer serve``.
The messages are plain data (``protocol``, checked by
``tests/unit/test_protocol.py``). Unpickling runs
code, so the socket lives in a directory only this user can open
(``supervisor``): anyone who can connect to it could already run code as
this user.
"""

from __future__ import annotations

import copyreg
import pickle
from typing import Any

import msgspec

from seqinfer.service.protocol import StepCommand
from seqinfer.v1 import seqinfer_pb2 as pb

ENGINE_SOCKET_ENV = "SEQINFER_ENGINE_SOCKET"
SETTINGS_ENV = "SEQINFER_CHILD_SETTINGS"
# The EngineClient methods a front end may call by name (besides steps).
CALLS = frozenset(
    {"models", "model", "open", "get", "close", "fork", "export", "import_state", "step_batch"}
)


# A TensorData's shape is, in process, the request's repeated field itself
# (protocol.TensorData); across processes it travels as the list it reads as.
copyreg.pickle(type(pb.Tensor().shape), lambda shape: (list, (list(shape),)))  # type: ignore[arg-type, return-value]


def encode(message: Any) -> bytes:
    return pickle.dumps(message, protocol=5)


_STEPS = b"\x01"  # first byte of a msgpack ``steps`` frame; never pickle's 0x80
_REPEATED = type(pb.Tensor().shape)


def _as_list(value: object) -> object:
    if isinstance(value, _REPEATED):
        return list(value)
    raise NotImplementedError(f"cannot send {type(value).__name__}")


_steps_encoder = msgspec.msgpack.Encoder(enc_hook=_as_list)
_steps_decoder = msgspec.msgpack.Decoder(list[tuple[int, StepCommand]])


def encode_steps(steps: list[tuple[int, StepCommand]]) -> bytes:
    """The ``("steps", steps)`` envelope, as msgpack."""
    return _STEPS + _steps_encoder.encode(steps)


def decode(data: bytes) -> Any:
    if data[:1] == _STEPS:
        return ("steps", _steps_decoder.decode(memoryview(data)[1:]))
    return pickle.loads(data)
