"""Queue bounds per model and per session, stream flow control, and the concurrent-call bound.

Each bound answers QUEUE_FULL (RESOURCE_EXHAUSTED) naming itself in the
ErrorInfo metadata (``bound``), applies nothing, and leaves other sessions
their room. The engine is held by a gate, so "queued" is a state the test
waits for, never a time it sleeps through.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.client import QueueFull, RetryPolicy
from seqinfer.client.errors import from_rpc_error, from_status
from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import (
    error_reason,
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    status_reason,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", name="bounded", seed=5)


def _x(t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 8)).astype(np.float32)


def _req(session_id: str, x: np.ndarray, **kw: Any) -> pb.StepRequest:
    return pb.StepRequest(session_id=session_id, inputs=to_tensor(x), **kw)


def _queued(server) -> int:
    return int(server.run_sync(lambda: server.server.runtimes[0].scheduler.queue_depth))


def _open(s: pb_grpc.SeqinferStub, *ids: str) -> None:
    for sid in ids:
        s.OpenSession(pb.OpenSessionRequest(model="bounded", session_id=sid))


def _refused(call: Any) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code, reason, metadata = error_reason(info.value)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
    assert RetryPolicy().should_retry(from_rpc_error(info.value), 1), "client would not retry"
    return metadata


@pytest.mark.parametrize(
    ("settings", "bound", "x", "room"),
    [
        ({"max_session_queue_size": 3}, "max_session_queue_size", _x(1), 3),
        # 4-step requests are 128 bytes of inputs: two fit in 300, a third does not.
        ({"max_session_queue_bytes": 300}, "max_session_queue_bytes", _x(4), 2),
    ],
)
def test_session_bounds_refuse_the_flooder_and_leave_other_sessions_room(settings, bound, x, room):
    with running_server([MODEL], **settings) as server, stub(server.address) as s:
        _open(s, "flood", "other")
        with gated(server) as gate:
            held = s.Step.future(_req("flood", x))
            gate.wait_entered(1)
            accepted = []
            while True:  # bounded: the session bound is at most 3 requests
                assert len(accepted) < 10, "the session bound never refused"
                future = s.Step.future(_req("flood", x))
                wait_until(lambda f=future: f.done() or _queued(server) == len(accepted) + 1)
                if future.done():
                    break
                accepted.append(future)
            metadata = _refused(future.result)
            assert metadata["bound"] == bound
            other = s.Step.future(_req("other", x, return_state=True))
            wait_until(lambda: _queued(server) == len(accepted) + 1, what="other queued")
            gate.open()
            steps = [f.result(60).step for f in [held, *accepted]]
            other_reply = other.result(60)
        assert len(accepted) == room
        t = len(x)
        assert steps == [t * (i + 1) for i in range(room + 1)]
        assert s.GetSession(pb.GetSessionRequest(session_id="flood")).step == (room + 1) * t
    _, want = reference_run(MODEL, x)
    np.testing.assert_allclose(from_tensor(other_reply.state), want, atol=1e-5, rtol=0)


def test_a_request_larger_than_the_bytes_bounds_fits_an_empty_queue():
    big = _x(64)  # 2 KiB of inputs
    with running_server([MODEL], max_session_queue_bytes=100, max_queue_bytes=100) as server:
        with stub(server.address) as s, gated(server) as gate:
            _open(s, "a", "b")
            held = s.Step.future(_req("a", _x(1)))
            gate.wait_entered(1)
            queued = s.Step.future(_req("b", big))  # empty queues: accepted
            wait_until(lambda: _queued(server) == 1)
            metadata = _refused(lambda: s.Step(_req("a", big)))
            assert metadata["bound"] == "max_queue_bytes"
            gate.open()
            assert held.result(60).step == 1 and queued.result(60).step == 64


def test_model_queue_bound_counts_requests_of_every_session():
    with running_server([MODEL], max_queue_size=2) as server, stub(server.address) as s:
        _open(s, "a", "b", "c", "d")
        with gated(server) as gate:
            held = s.Step.future(_req("a", _x(1)))
            gate.wait_entered(1)
            queued = [s.Step.future(_req(sid, _x(1))) for sid in ("b", "c")]
            wait_until(lambda: _queued(server) == 2)
            metadata = _refused(lambda: s.Step(_req("d", _x(1))))
            assert metadata == {"bound": "max_queue_size", "limit": "2"}
            gate.open()
            assert [f.result(60).step for f in [held, *queued]] == [1, 1, 1]
        assert s.GetSession(pb.GetSessionRequest(session_id="d")).step == 0


def test_stream_stops_reading_at_its_unsent_bound():
    bound, total = 4, 40
    with running_server([MODEL], max_stream_unsent=bound) as server, stub(server.address) as s:
        _open(s, *(f"s{i}" for i in range(total)))
        runtime = server.server.runtimes[0]
        most = [0]
        submit = runtime.scheduler.submit

        def counting(item: Any) -> None:  # on the server's loop, like submit itself
            submit(item)
            scheduler = runtime.scheduler
            most[0] = max(most[0], scheduler.queue_depth + scheduler.in_flight)

        server.run_sync(lambda: setattr(runtime.scheduler, "submit", counting))
        sent = threading.Event()

        def requests():
            for i in range(total):
                yield _req(f"s{i}", _x(1, i))
            sent.set()

        with gated(server) as gate:
            stream = s.StreamSteps(requests())
            gate.wait_entered(1)
            assert sent.wait(60), "the client could not hand gRPC its 40 small requests"
            wait_until(lambda: _queued(server) + gate.items >= bound, what="bound reached")
            gate.open()
            results = list(stream)
    assert [r.session_id for r in results] == [f"s{i}" for i in range(total)]
    assert all(r.response.step == 1 for r in results)
    assert most[0] <= bound, f"{most[0]} requests of one stream outstanding; bound {bound}"


def test_bound_on_concurrent_calls_refuses_unary_and_stream_with_queue_full():
    limit = 20
    with running_server([MODEL], max_concurrent_rpcs=limit) as server, stub(server.address) as s:
        _open(s, *(f"c{i}" for i in range(limit)))
        with gated(server) as gate:
            held = [s.Step.future(_req(f"c{i}", _x(1))) for i in range(limit)]
            gate.wait_entered(1)
            wait_until(lambda: _queued(server) + gate.items == limit, what="all calls inside")
            metadata = _refused(lambda: s.GetSession(pb.GetSessionRequest(session_id="c0")))
            assert metadata == {"bound": "max_concurrent_rpcs", "limit": str(limit)}
            _refused(lambda: list(s.StreamSteps(iter([_req("c0", _x(1))]))))
            gate.open()
            assert all(f.result(60).step == 1 for f in held)
        # Every call above has finished: there is room again.
        assert s.GetSession(pb.GetSessionRequest(session_id="c0")).step == 1


async def _burst(address: str, n: int) -> Counter[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        s = pb_grpc.SeqinferStub(channel)
        x = to_tensor(_x(1))

        async def one(i: int) -> str:
            try:
                await s.Step(pb.StepRequest(session_id=f"b{i}", start=True, inputs=x))
                return "OK"
            except grpc.aio.AioRpcError as error:
                return error.code().name

        return Counter(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_burst_of_3000_unary_calls_on_one_channel_all_reach_seqinfer():
    # gRPC's defaults dropped calls past 1000 waiting to be picked up (CANCELLED).
    with running_server([MODEL]) as server:
        codes = asyncio.run(_burst(server.address, 3000))
        assert codes == Counter({"OK": 3000})
        assert len(server.server.runtimes[0].table) == 3000


class _Rejections(Observer):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def request_rejected(self, model: str, reason: str) -> None:
        self.reasons.append(reason)


def test_queue_full_in_a_stream_result_names_its_bound():
    rejections = _Rejections()
    with (
        running_server([MODEL], observer=rejections, max_session_queue_size=1) as server,
        stub(server.address) as s,
    ):
        _open(s, "q")
        with gated(server) as gate:
            held = s.Step.future(_req("q", _x(1)))
            gate.wait_entered(1)
            # The first is queued behind the held one, the second finds the queue full.
            stream = s.StreamSteps(iter([_req("q", _x(1)) for _ in range(2)]))
            wait_until(lambda: _queued(server) == 1)
            # Read and refused while the engine is still held (else it could be
            # read after the queue emptied, and be accepted).
            wait_until(lambda: "backpressure" in rejections.reasons, what="the refusal")
            gate.open()
            results = list(stream)
            assert held.result(60).step == 1
    assert [r.WhichOneof("outcome") for r in results] == ["response", "error"]
    assert results[0].response.step == 2
    _, reason, metadata = status_reason(results[1].error)
    assert (reason, metadata["bound"]) == ("QUEUE_FULL", "max_session_queue_size")
    assert isinstance(from_status(results[1].error), QueueFull)
