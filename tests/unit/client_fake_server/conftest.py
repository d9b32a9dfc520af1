"""The scripted fake on an ephemeral loopback port, and a client for it.

Each test gets its own server, so one test's scripted failures and sessions
never leak into another's.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from seqinfer.client import Client
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.unit.client_fake_server.fake_seqinfer import FAST_RETRY, FakeSeqinfer


@pytest.fixture
def fake() -> Iterator[tuple[FakeSeqinfer, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = FakeSeqinfer()
    pb_grpc.add_SeqinferServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


@pytest.fixture
def client(fake: tuple[FakeSeqinfer, str]) -> Iterator[Client]:
    with Client(fake[1], retry=FAST_RETRY, timeout=10, metadata=[("x-test", "yes")]) as c:
        yield c
