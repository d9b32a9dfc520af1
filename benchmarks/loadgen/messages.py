"""Pre-serialised requests and cheap reply checks for each transport.

The load generator shares the machine's two cores with the server it
measures, so every microsecond it spends building messages is taken from the
server. Requests are therefore serialised once per session (a few input
variants each) and sent as bytes through a method with no serializer; replies
are parsed (so errors and wrong sizes are caught) but nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.loadgen.spec import LoadSpec
from seqinfer.v1 import seqinfer_pb2 as pb

STEP_PATH = "/seqinfer.v1.Seqinfer/Step"
STREAM_PATH = "/seqinfer.v1.Seqinfer/StreamSteps"
MANY_PATH = "/seqinfer.v1.Seqinfer/StepMany"
CLOSE_PATH = "/seqinfer.v1.Seqinfer/CloseSession"

# (ok steps, error steps, first error text or "") for one reply.
ReplyCheck = Callable[[bytes], tuple[int, int, str]]


@dataclass
class SessionMessages:
    """The requests one caller sends: the first (creates sessions), then the rest."""

    first: bytes
    steady: list[bytes]
    # Steps each request carries (1, or the group size for StepMany).
    steps_per_request: int
    session_ids: list[str]


def session_inputs(index: int, spec: LoadSpec) -> list[bytes]:
    """Raw float32 LE inputs [1, input_size] for one session, seeded by its index."""
    rng = np.random.default_rng(1_000_003 * (index + 1))
    return [
        rng.standard_normal((1, spec.input_size), dtype=np.float32).astype("<f4").tobytes()
        for _ in range(spec.input_variants)
    ]


def session_id(spec: LoadSpec, index: int) -> str:
    return f"{spec.session_prefix}-{index}"


def _step_request(spec: LoadSpec, sid: str, data: bytes, start: bool) -> pb.StepRequest:
    request = pb.StepRequest(
        session_id=sid,
        inputs=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, spec.input_size], data=data),
        output_mode=pb.OUTPUT_MODE_LAST,
    )
    if start:
        request.start = True
        request.model = spec.model
        if spec.idle_ttl is not None:
            request.idle_ttl_seconds = spec.idle_ttl
    return request


def seqinfer_single(spec: LoadSpec, index: int) -> SessionMessages:
    """StepRequests of one session (for StreamSteps and unary Step)."""
    sid = session_id(spec, index)
    inputs = session_inputs(index, spec)
    first = _step_request(spec, sid, inputs[0], start=True).SerializeToString()
    steady = [_step_request(spec, sid, d, start=False).SerializeToString() for d in inputs]
    return SessionMessages(first, steady, 1, [sid])


def seqinfer_many(spec: LoadSpec, indices: list[int]) -> SessionMessages:
    """StepManyRequests carrying one step of each session in `indices`."""
    sids = [session_id(spec, i) for i in indices]
    inputs = [session_inputs(i, spec) for i in indices]

    def message(variant: int, start: bool) -> bytes:
        steps = [
            _step_request(spec, sid, per[variant % len(per)], start)
            for sid, per in zip(sids, inputs, strict=True)
        ]
        return pb.StepManyRequest(steps=steps).SerializeToString()

    first = message(0, start=True)
    steady = [message(v, start=False) for v in range(spec.input_variants)]
    return SessionMessages(first, steady, len(indices), sids)


def close_request(sid: str) -> bytes:
    return pb.CloseSessionRequest(session_id=sid).SerializeToString()


def _output_error(response: pb.StepResponse, output_size: int) -> str:
    got = len(response.outputs.data)
    if got != 4 * output_size:
        return f"output has {got} bytes, expected {4 * output_size}"
    return ""


def check_stream_reply(output_size: int) -> ReplyCheck:
    """A StepResult: ok when it holds a response with the expected output size."""

    def check(raw: bytes) -> tuple[int, int, str]:
        result = pb.StepResult.FromString(raw)
        if result.WhichOneof("outcome") == "error":
            return 0, 1, f"code {result.error.code}: {result.error.message}"
        problem = _output_error(result.response, output_size)
        return (0, 1, problem) if problem else (1, 0, "")

    return check


def check_unary_reply(output_size: int) -> ReplyCheck:
    def check(raw: bytes) -> tuple[int, int, str]:
        problem = _output_error(pb.StepResponse.FromString(raw), output_size)
        return (0, 1, problem) if problem else (1, 0, "")

    return check


def check_many_reply(output_size: int) -> ReplyCheck:
    def check(raw: bytes) -> tuple[int, int, str]:
        ok = bad = 0
        first = ""
        for result in pb.StepManyResponse.FromString(raw).results:
            if result.WhichOneof("outcome") == "error":
                problem = f"code {result.error.code}: {result.error.message}"
            else:
                problem = _output_error(result.response, output_size)
            if problem:
                bad += 1
                first = first or problem
            else:
                ok += 1
        return ok, bad, first

    return check
