"""Front-end processes ⇄ the engine process: the envelopes, over ZeroMQ ``ipc://``.

One DEALER socket per front end, one ROUTER in the engine. Envelopes:

- front → engine: ``("steps", [(seq, StepCommand), ...])``, every step a front
  end decoded in one event-loop turn, coalesced into one message, because one
  IPC message per request would saturate the engine's core long before the
  front ends do; and ``("call", seq, method, args)`` for every other command
  (``CALLS``); ``("cancel", [seq, ...])``, the steps whose callers went
  away, sent after the steps they recall (never answered); and
  ``("metrics", frontend_index, snapshot)`` about once a
  second and at shutdown, the front end's gRPC counters as plain data
  (``metrics.frontends``), which the engine keeps for its exporter and
  never answers;
- engine → front: ``("replies", [(seq, reply), ...])``, every reply the
  engine finished in one loop turn; a reply is the command's result or the
  ``SeqinferError`` that refused it.

The payload is pickled (protocol 5). Both ends are this package at the same
version, started together by ``seqinfer serve``. The messages are plain
data (``protocol``, checked by ``tests/unit/test_protocol.py``), so
``msgspec`` could replace pickle without changing them. Unpickling runs
code, so the socket lives in a directory only this user can open
(``supervisor``): anyone who can connect to it could already run code as
this user.
"""

from __future__ import annotations

import copyreg
import pickle
from typing import Any

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


def decode(data: bytes) -> Any:
    return pickle.loads(data)
