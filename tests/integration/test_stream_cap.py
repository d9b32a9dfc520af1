"""``max_streams_per_connection``: a connection's calls past the cap wait in the client.

HTTP/2's max_concurrent_streams is what the server tells each client in its
SETTINGS, so the excess never reaches the server's event loop (no call to
pick up, nothing to refuse). With a cap of 2 and two StreamSteps calls open
on one channel, a third call on that channel waits (its deadline passes in
the client); once one stream ends, the next call goes through. Without the
cap, the same third call goes through at once.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import make_model, running_server, to_tensor

MODEL = make_model("dense", name="m", seed=9)
X = to_tensor(np.ones((1, 8), np.float32))
END = None


def _requests(feed: queue.SimpleQueue[pb.StepRequest | None]) -> Iterator[pb.StepRequest]:
    while (request := feed.get()) is not END:
        yield request


def _open_stream(stub: pb_grpc.SeqinferStub, sid: str) -> tuple[object, queue.SimpleQueue]:
    """A StreamSteps call that has answered one step (so it holds its HTTP/2 stream)."""
    feed: queue.SimpleQueue[pb.StepRequest | None] = queue.SimpleQueue()
    call = stub.StreamSteps(_requests(feed), timeout=60)
    feed.put(pb.StepRequest(session_id=sid, inputs=X, start=True))
    assert next(call).response.step == 1  # type: ignore[call-overload]
    return call, feed


@pytest.mark.parametrize("cap", [0, 2])
def test_calls_past_the_cap_wait_in_the_client(cap):
    with running_server([MODEL], max_streams_per_connection=cap) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SeqinferStub(channel)
            streams = [_open_stream(stub, f"s{i}") for i in range(2)]

            def third(timeout: float) -> grpc.StatusCode:
                try:
                    stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
                except grpc.RpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            if cap == 0:
                assert third(20) == grpc.StatusCode.OK
            else:
                assert third(2) == grpc.StatusCode.DEADLINE_EXCEEDED
                call, feed = streams.pop()
                feed.put(END)
                assert list(call) == []  # type: ignore[call-overload]
                assert third(20) == grpc.StatusCode.OK
            for call, feed in streams:
                feed.put(END)
                list(call)  # type: ignore[call-overload]
