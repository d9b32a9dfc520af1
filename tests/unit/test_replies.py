"""The reply-size bounds hold for real messages at the extremes; errors stay small.

``replies.result_bytes`` must never be below the serialized size of the
StepResult it stands for (else a reply over ``max_message_bytes`` could be
applied and then refused by gRPC), and a compacted error result must fit in
the least any estimate reserves.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch

from seqinfer.service import replies
from seqinfer.service.bounds import MAX_STEP
from seqinfer.service.engine import OutputMode
from seqinfer.service.errors import (
    MAX_MESSAGE_BYTES,
    InvalidInput,
    SeqinferError,
    StepGap,
    clip,
    echo,
)
from seqinfer.service.models.spec import InputKind, ModelSpec, OutputKind
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.results import ResultBuilder, compact
from seqinfer.service.status import to_status_proto
from seqinfer.v1 import seqinfer_pb2 as pb

BUILDER = ResultBuilder(1 << 30, 128, 128)
IDS = [("", ""), ("s" * 128, "r" * 128), ("é" * 64, "€" * 42)]
SPEC = ModelSpec(
    name="wide",
    version="1",
    input_kind=InputKind.DENSE,
    input_size=8,
    hidden_size=300,
    num_layers=3,
    output_kind=OutputKind.LOGITS,
    output_size=200,
)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _done(outcome: StepOutcome | BaseException, loop) -> asyncio.Future[StepOutcome]:
    future: asyncio.Future[StepOutcome] = loop.create_future()
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    return future


def _id_bytes(session_id: str, request_id: str) -> int:
    return len(session_id.encode()) + len(request_id.encode())


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16"])
@pytest.mark.parametrize("mode", list(OutputMode))
@pytest.mark.parametrize("ids", IDS)
def test_result_bytes_bounds_the_serialized_result(dtype, mode, ids):
    spec = dataclasses.replace(SPEC, dtype=dtype)
    shape = replies.reply_shape(spec)
    out_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    timesteps = 700  # enough for the data's length varint to take 3 bytes
    outputs = None
    if mode is OutputMode.LAST:
        outputs = np.ones(spec.out_features, out_dtype)
    elif mode is OutputMode.ALL:
        outputs = np.ones((timesteps, spec.out_features), out_dtype)
    state = np.ones((spec.num_layers, spec.hidden_size), out_dtype)
    outcome = StepOutcome(*ids, MAX_STEP, outputs, state, True, True, True)
    response = pb.StepManyResponse()
    BUILDER.fill(response.results.add(), "", "", outcome)
    # In a StepManyResponse: the result's own tag and length are counted too.
    bound = replies.result_bytes(shape, timesteps, mode, True, _id_bytes(*ids))
    assert response.ByteSize() <= bound
    assert bound - response.ByteSize() <= replies.RESULT_OVERHEAD + 2 * _id_bytes(*ids)
    # The quick bound of a StepMany holding only this step.
    request = pb.StepManyRequest()
    request.steps.add(session_id=ids[0], request_id=ids[1], output_mode=pb.OUTPUT_MODE_ALL)
    request.steps[0].inputs.data = b"\0" * (timesteps * spec.input_size * 2)  # float16 inputs
    quick = replies.MessageBound.of([spec]).reply_bytes(1, request.ByteSize())
    assert quick >= bound >= response.ByteSize()


def test_export_bytes_bounds_the_export_reply():
    spec = dataclasses.replace(
        SPEC, hidden_size=100, num_layers=4, name="n" * 100, version="v" * 50
    )
    reply = pb.ExportStateResponse(
        session=pb.SessionInfo(
            session_id="s" * 128,
            model=spec.name,
            model_version=spec.version,
            step=MAX_STEP,
            tier=pb.STATE_TIER_DEVICE,
            idle_ttl_seconds=1e9,
        ),
        state=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[4, 100], data=b"\0" * 1600),
    )
    reply.session.created_at.FromNanoseconds(2**62)
    reply.session.last_used_at.FromNanoseconds(2**62)
    assert reply.ByteSize() <= replies.export_bytes(spec, 128)


def _worst_error() -> SeqinferError:
    return InvalidInput(
        "inputs.shape", "x" * 100_000, **{f"key{i}": "é" * 10_000 for i in range(4)}
    )


@pytest.mark.parametrize("ids", IDS)
def test_a_compacted_error_fits_the_smallest_estimate(ids):
    result = pb.StepResult()
    request = pb.StepRequest(session_id=ids[0], request_id=ids[1])
    BUILDER.fill(result, request.session_id, request.request_id, _worst_error())
    compact(result)
    assert result.error.details  # still says which reason
    holder = pb.StepManyResponse()
    holder.results.append(result)
    assert holder.ByteSize() <= replies.RESULT_OVERHEAD + 2 * _id_bytes(*ids)


def test_every_status_is_small_whatever_the_caller_sent():
    status = to_status_proto(_worst_error())
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    assert status.ByteSize() <= 1200
    gap = StepGap(f"expected_step 1 but session {echo('s' * 1000)} is at step 2", current_step=2)
    assert len(gap.message) < 200


def test_replays_that_do_not_fit_become_too_large(loop):
    builder = ResultBuilder(4096, 128, 128)
    outcome = StepOutcome("s", "r", 3, np.ones(2000, np.float32), replayed=True)
    result = builder.step_result(
        pb.StepRequest(session_id="s", request_id="r"), _done(outcome, loop)
    )
    assert result.WhichOneof("outcome") == "error" and result.session_id == "s"
    assert result.ByteSize() <= 4096
    fresh = dataclasses.replace(outcome, outputs=np.ones(100, np.float32))
    kept = builder.step_result(pb.StepRequest(), _done(fresh, loop))
    assert kept.response.replayed and len(kept.response.outputs.data) == 400


def test_echo_and_clip():
    assert echo("abc") == "'abc'"
    assert echo("a" * 1000) == f"{'a' * 64!r}… (1000 characters)"
    assert echo(list(range(3))) == "[0, 1, 2]"
    assert echo(list(range(10**6))) == "[0, 1, 2, 3, 4, 5, 6, 7, …] (1000000 items)"
    assert echo(torch.Size([2, 3])) == "[2, 3]"
    assert clip("é" * 1000, 100).endswith("…") and len(clip("é" * 1000, 100).encode()) <= 100
    assert clip("short", 10) == "short"
