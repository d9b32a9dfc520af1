"""`frontend_loop: uvloop`: the front-end processes run on uvloop and serve as on asyncio.

The setting is opt-in (docs/benchmarks.md: on this 2-core machine it
measured no faster than asyncio's loop), so this checks what it promises:
each front end says it runs on uvloop, and a session stepped through it
matches torch.nn.GRU over its whole sequence.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from seqinfer.service.models.builtin import bench_gru
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import from_tensor, reference_run, to_tensor

MODEL = bench_gru()


def test_front_ends_on_uvloop_serve_exactly(tmp_path: Path) -> None:
    pytest.importorskip("uvloop", reason="uvloop is a dev dependency (pip install uvloop)")
    config = tmp_path / "settings.yaml"
    config.write_text("frontend_loop: uvloop\n")
    args = serve_args("--frontends", "1", "--config", str(config), "--log-level", "INFO")
    with ServeProcess(args) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        xs = [np.random.default_rng(k).standard_normal((3, 64)).astype("f4") for k in range(3)]
        reply = None
        for k, x in enumerate(xs):
            request = pb.StepRequest(
                session_id="u", inputs=to_tensor(x), model="bench-gru", start=k == 0,
                expected_step=3 * k, output_mode=pb.OUTPUT_MODE_ALL,
            )  # fmt: skip
            reply = api.Step(request, timeout=60)
        assert reply is not None and reply.step == 9
        outputs, _ = reference_run(MODEL, np.concatenate(xs))
        np.testing.assert_allclose(from_tensor(reply.outputs), outputs[-3:], rtol=1e-5, atol=1e-5)
        server.wait_for(lambda: "runs on uvloop" in server.log(), 60, "the front end's loop line")
