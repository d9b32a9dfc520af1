"""The load generator's adapter for TorchServe's ``StreamPredictions2``.

One bidirectional stream per session; each request carries the session's
``sequence_id`` and an input map {"data": raw float32 bytes, "start" on the
first request}; each reply's ``prediction`` is the raw float32 output (or
b"ERR ..." from the handler). Stubs come from ``gen/`` (built by setup).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.loadgen.messages import ReplyCheck, SessionMessages, session_id, session_inputs
from benchmarks.loadgen.spec import LoadSpec
from benchmarks.peers.torchserve.peer import GEN

STREAM_PATH = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2"


def _pb() -> Any:
    # The generated module imports itself as a top-level `inference_pb2`.
    if str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    import inference_pb2

    return inference_pb2


def request(spec: LoadSpec, sid: str, data: bytes, start: bool = False, end: bool = False) -> bytes:
    inputs = {"data": data}
    if start:
        inputs["start"] = b"1"
    if end:
        inputs["end"] = b"1"
    return bytes(
        _pb()
        .PredictionsRequest(model_name=spec.ts_model, sequence_id=sid, input=inputs)
        .SerializeToString()
    )


def messages(spec: LoadSpec, index: int) -> SessionMessages:
    sid = session_id(spec, index)
    inputs = session_inputs(index, spec)
    first = request(spec, sid, inputs[0], start=True)
    return SessionMessages(first, [request(spec, sid, d) for d in inputs], 1, [sid])


def parse_reply(raw: bytes) -> tuple[bytes, str]:
    """(prediction bytes, error text or "")."""
    reply = _pb().PredictionResponse.FromString(raw)
    if reply.HasField("status") and reply.status.code != 0:
        return b"", f"code {reply.status.code}: {reply.status.message}"
    if reply.prediction.startswith(b"ERR "):
        return b"", reply.prediction[4:].decode(errors="replace")
    return bytes(reply.prediction), ""


def check_reply(spec: LoadSpec) -> ReplyCheck:
    expected = 4 * spec.output_size

    def check(raw: bytes) -> tuple[int, int, str]:
        prediction, problem = parse_reply(raw)
        if not problem and len(prediction) != expected:
            problem = f"prediction has {len(prediction)} bytes, expected {expected}"
        return (0, 1, problem) if problem else (1, 0, "")

    return check
