"""StepMany read column-wise: one message, many models, dtypes and failures, each step on its own.

The server decodes a StepMany's inputs per model and wire dtype at once (one
join, one view, one finiteness check), and falls back to one step at a time
only to find which steps failed, or when a step's session turns out to
belong to another model than the one its inputs were decoded for. Here one
message mixes all of that; every applied step must equal torch.nn.GRU on
its session's whole sequence, and every refused one must fail alone with
the reason a single Step would get.
"""

from __future__ import annotations

import numpy as np
import torch

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    make_model,
    reference_run,
    running_server,
    status_reason,
    stub,
    to_tensor,
)

A = make_model("dense", input_size=8, name="a", seed=11)
B = make_model("dense", input_size=4, name="b", seed=12)
T = make_model("tokens", input_size=10, name="t", seed=13)


def _x(t: int, width: int, seed: int, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, width)).astype(dtype)


def _bfloat16(x: np.ndarray) -> pb.Tensor:
    data = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    return pb.Tensor(dtype=pb.DTYPE_BFLOAT16, shape=list(x.shape), data=data)


def test_one_message_of_mixed_models_dtypes_and_failures():
    nan = _x(1, 8, 1)
    nan[0, 3] = np.nan
    huge = _x(1, 8, 2, "float64")
    huge[0, 0] = 1e39  # finite in float64, not in the model's float32
    bf = _x(1, 8, 3)
    steps = [
        ("a0", pb.StepRequest(session_id="a0", inputs=to_tensor(_x(1, 8, 10)))),
        ("nan", pb.StepRequest(session_id="a1", inputs=to_tensor(nan))),
        ("shape", pb.StepRequest(session_id="a2", inputs=to_tensor(_x(1, 7, 11)))),
        ("missing", pb.StepRequest(session_id="nope", inputs=to_tensor(_x(1, 8, 12)))),
        ("new-b", pb.StepRequest(session_id="nb", start=True, model="b",
                                 inputs=to_tensor(_x(3, 4, 13)), output_mode=pb.OUTPUT_MODE_ALL)),
        ("f64", pb.StepRequest(session_id="a3", inputs=to_tensor(_x(2, 8, 14, "float64")),
                               output_mode=pb.OUTPUT_MODE_ALL)),
        ("huge", pb.StepRequest(session_id="a4", inputs=to_tensor(huge))),
        ("tokens", pb.StepRequest(session_id="t0", inputs=to_tensor(np.array([3, 1], np.int64)),
                                  output_mode=pb.OUTPUT_MODE_ALL)),
        ("vocab", pb.StepRequest(session_id="t1", inputs=to_tensor(np.array([10], np.int32)))),
        ("x-on-a", pb.StepRequest(session_id="x", start=True, model="a",
                                  inputs=to_tensor(_x(1, 8, 15)))),
        # Names model b, but "x" now exists on model a: the inputs were decoded
        # for b (and refused there), so they must be decoded again for a.
        ("x-again", pb.StepRequest(session_id="x", start=True, model="b",
                                   inputs=to_tensor(_x(1, 8, 16)))),
        ("bf16", pb.StepRequest(session_id="a5", inputs=_bfloat16(bf))),
        ("a0-later", pb.StepRequest(session_id="a0", inputs=to_tensor(_x(1, 8, 17)))),
    ]  # fmt: skip
    with running_server([A, B, T]) as server, stub(server.address) as api:
        for sid, model in [("a0", "a"), ("a1", "a"), ("a2", "a"), ("a3", "a"), ("a4", "a"),
                           ("a5", "a"), ("t0", "t"), ("t1", "t")]:  # fmt: skip
            api.OpenSession(pb.OpenSessionRequest(model=model, session_id=sid))
        reply = api.StepMany(pb.StepManyRequest(steps=[s for _, s in steps]))
        results = dict(zip((name for name, _ in steps), reply.results, strict=True))
        states = {
            sid: api.ExportState(pb.ExportStateRequest(session_id=sid)).state
            for sid in ("a0", "a1", "a2", "a4", "t1")
        }

    def refused(name: str) -> tuple[str, str]:
        result = results[name]
        assert result.WhichOneof("outcome") == "error", name
        _, reason, metadata = status_reason(result.error)
        return reason, metadata.get("field", "")

    assert refused("nan") == ("INVALID_INPUT", "inputs.data")
    assert refused("shape") == ("INVALID_INPUT", "inputs.shape")
    assert refused("missing")[0] == "SESSION_NOT_FOUND"
    assert refused("huge") == ("INVALID_INPUT", "inputs.data")
    assert refused("vocab") == ("INVALID_INPUT", "inputs.data")
    # Nothing was applied to a refused step's session.
    for sid in ("a1", "a2", "a4", "t1"):
        assert not np.frombuffer(states[sid].data, np.float32).any(), sid

    def applied(name: str, model, inputs, step: int, h0=None, last: bool = True) -> np.ndarray:
        result = results[name]
        assert result.WhichOneof("outcome") == "response", (name, result.error.message)
        assert result.response.step == step, name
        want, state = reference_run(model, inputs, h0)
        got = np.frombuffer(result.response.outputs.data, np.float32)
        np.testing.assert_allclose(got, (want[-1] if last else want).ravel(), atol=1e-5)
        return state

    first = np.concatenate([_x(1, 8, 10), _x(1, 8, 17)])
    applied("a0", A, first[:1], 1)
    applied("a0-later", A, first, 2)
    applied("new-b", B, _x(3, 4, 13), 3, last=False)
    assert results["new-b"].response.created
    applied("f64", A, _x(2, 8, 14, "float64").astype(np.float32), 2, last=False)
    applied("tokens", T, np.array([3, 1]), 2, last=False)
    applied("x-on-a", A, _x(1, 8, 15), 1)
    applied("x-again", A, np.concatenate([_x(1, 8, 15), _x(1, 8, 16)]), 2)
    bf_rounded = torch.from_numpy(bf).to(torch.bfloat16).float().numpy()
    applied("bf16", A, bf_rounded, 1)
