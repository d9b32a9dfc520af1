"""The server reports what it does through the Observer hooks (what metrics are built on)."""

from __future__ import annotations

from collections import Counter

import grpc
import numpy as np
import pytest

from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import make_model, running_server, stub, to_tensor

MODEL = make_model("dense", name="obs", seed=1)


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: Counter[tuple[str, ...]] = Counter()
        # Checked by the test, not here: an assert in a hook would fail inside
        # the server's scheduler, never in the test.
        self.latencies: list[tuple[float, float]] = []

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        self.events["rpc", method, code] += 1

    def request_completed(self, model, timesteps, latency_seconds, queue_seconds) -> None:
        self.latencies.append((latency_seconds, queue_seconds))
        self.events["completed", model] += timesteps

    def request_rejected(self, model: str, reason: str) -> None:
        self.events["rejected", model, reason] += 1

    def batch_completed(self, model, requests, timesteps, seconds) -> None:
        self.events["batches", model] += 1

    def session_opened(self, model: str) -> None:
        self.events["opened", model] += 1

    def session_ended(self, model: str, reason: str) -> None:
        self.events["ended", model, reason] += 1


def test_hooks_see_steps_rejections_and_session_lifecycle():
    recorder = Recorder()
    x = to_tensor(np.ones((2, 8), np.float32))
    with running_server([MODEL], observer=recorder, max_sessions=2) as server:
        with stub(server.address) as api:
            api.Step(pb.StepRequest(session_id="a", start=True, model="obs", inputs=x))
            api.OpenSession(pb.OpenSessionRequest(model="obs", session_id="b"))
            for bad in (
                pb.StepRequest(session_id="a", inputs=to_tensor(np.ones((1, 3), np.float32))),
                pb.StepRequest(session_id="c", start=True, model="obs", inputs=x),
            ):
                with pytest.raises(grpc.RpcError):
                    api.Step(bad)
            api.CloseSession(pb.CloseSessionRequest(session_id="b"))
            api.Step(pb.StepRequest(session_id="a", inputs=x, end=True))
    key = "obs:1"
    events = recorder.events
    assert events["completed", key] == 4 and events["batches", key] == 2
    assert len(recorder.latencies) == 2
    assert all(latency >= queued >= 0 for latency, queued in recorder.latencies)
    assert events["rejected", key, "invalid"] == 1
    assert events["rejected", key, "capacity"] == 1
    assert events["opened", key] == 2 and events["ended", key, "closed"] == 2
    assert events["rpc", "Step", "OK"] == 2
    assert events["rpc", "Step", "INVALID_ARGUMENT"] == 1
    assert events["rpc", "Step", "RESOURCE_EXHAUSTED"] == 1
