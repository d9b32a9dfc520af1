"""The load behind the dashboard e2e test: every path that feeds a metric, over raw gRPC.

The served models and limits are chosen with the load: the churn exceeds
`MAX_SESSIONS` (LRU evicts), a burst exceeds `MAX_QUEUE` (QUEUE_FULL), a
short-lived session expires, bad inputs and unknown sessions are refused.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import grpc
import numpy as np

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import make_model, to_tensor

DENSE = make_model("dense", name="dense", input_size=8, hidden=16, layers=2, seed=1)
TOKENS = make_model("tokens", name="tokens", input_size=50, hidden=16, layers=1, seed=2)
MAX_SESSIONS = 24  # per model; the churn below exceeds it, so LRU evicts
MAX_QUEUE = 8  # the burst below queues more than this, so QUEUE_FULL happens


def dense(rows: int, rng: np.random.Generator) -> pb.Tensor:
    return to_tensor(rng.standard_normal((rows, 8)).astype(np.float32))


def tokens(rows: int, rng: np.random.Generator) -> pb.Tensor:
    return to_tensor(rng.integers(0, 50, size=rows).astype(np.int64))


class Load:
    """Drives every metric-feeding path in a loop until stopped; counts outcomes."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "load thread did not stop"

    def _call(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            reply = fn(*args, timeout=5, **kw)
        except grpc.RpcError as e:
            self.outcomes[f"{name}:{e.code().name}"] += 1
            return None
        self.outcomes[f"{name}:OK"] += 1
        return reply

    def _run(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                api = pb_grpc.SeqinferStub(channel)
                i = 0
                while not self.stop.is_set():
                    self._iteration(api, i)
                    i += 1
        except BaseException as e:  # surfaced by the test, not lost in a thread
            self.failure = e

    def _iteration(self, api: pb_grpc.SeqinferStub, i: int) -> None:
        rng = np.random.default_rng(i)
        step = pb.StepRequest
        # Steady sessions (start=True recreates one that LRU evicted).
        for k in range(4):
            t = (1, 1, 4, 1, 32)[(i + k) % 5]  # 32: the long-chunk (nn.GRU) path
            self._call(
                "Step",
                api.Step,
                step(session_id=f"steady-{k}", start=True, model="dense", inputs=dense(t, rng)),
            )
        self._call(
            "Step",
            api.Step,
            step(session_id="tok-0", start=True, model="tokens", inputs=tokens(3, rng)),
        )
        many = [
            step(session_id=f"steady-{k}", start=True, model="dense", inputs=dense(1, rng))
            for k in range(3)
        ]
        self._call("StepMany", api.StepMany, pb.StepManyRequest(steps=many))
        stream = [
            step(session_id=f"steady-{k % 2}", start=True, model="dense", inputs=dense(1, rng))
            for k in range(4)
        ]
        try:
            for result in api.StreamSteps(iter(stream), timeout=5):
                self.outcomes["StreamSteps:item"] += 1
                if result.HasField("error"):
                    self.outcomes[f"StreamSteps:item-error-{result.error.code}"] += 1
        except grpc.RpcError as e:
            self.outcomes[f"StreamSteps:{e.code().name}"] += 1

        # Errors: bad shape (INVALID_ARGUMENT), unknown session (NOT_FOUND).
        self._call(
            "Step", api.Step, step(session_id="steady-0", inputs=to_tensor(np.zeros((1, 3))))
        )
        self._call("Step", api.Step, step(session_id=f"never-{i}", inputs=dense(1, rng)))
        self._call("GetSession", api.GetSession, pb.GetSessionRequest(session_id=f"never-{i}"))

        # Lifecycle: open + close, fork, a short-lived session for the TTL sweeper.
        opened = self._call("OpenSession", api.OpenSession, pb.OpenSessionRequest(model="dense"))
        if opened is not None:
            forked = self._call(
                "ForkSession",
                api.ForkSession,
                pb.ForkSessionRequest(session_id=opened.session_id),
            )
            for info in (opened, forked):
                if info is not None:
                    self._call(
                        "CloseSession",
                        api.CloseSession,
                        pb.CloseSessionRequest(session_id=info.session_id),
                    )
        self._call(
            "OpenSession",
            api.OpenSession,
            pb.OpenSessionRequest(model="tokens", idle_ttl_seconds=0.2),
        )
        # Churn past max_sessions: LRU evicts the idle ones.
        for j in range(4):
            self._call(
                "Step",
                api.Step,
                step(session_id=f"churn-{i}-{j}", start=True, model="dense", inputs=dense(1, rng)),
            )
        # A burst larger than the queue: some items come back RESOURCE_EXHAUSTED (QUEUE_FULL).
        if i % 3 == 0:
            burst = [
                step(session_id=f"burst-{k}", start=True, model="tokens", inputs=tokens(1, rng))
                for k in range(MAX_QUEUE + 4)
            ]
            reply = self._call("StepMany", api.StepMany, pb.StepManyRequest(steps=burst))
            if reply is not None:
                for result in reply.results:
                    if result.HasField("error"):
                        self.outcomes[f"StepMany:item-error-{result.error.code}"] += 1
        # A deadline too short to meet, now and then (the server may or may not see it).
        if i % 5 == 0:
            try:
                api.Step(
                    step(session_id="steady-1", start=True, model="dense", inputs=dense(1, rng)),
                    timeout=0.0005,
                )
            except grpc.RpcError as e:
                self.outcomes[f"Step-deadline:{e.code().name}"] += 1
