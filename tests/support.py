"""Running a real seqinfer server on 127.0.0.1 with an ephemeral port, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from seqinfer.service.config import Settings
from seqinfer.service.models.spec import LoadedModel
from seqinfer.service.server import SeqinferServer
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "device": "cpu",
        "initial_capacity": 8,
        "torch_threads": 1,
    }
    values.update(overrides)
    # model_construct would skip validation; tests want the real thing.
    return Settings(**values)


class ServerThread:
    """A SeqinferServer on its own event loop in a background thread."""

    def __init__(self, settings: Settings, models: list[LoadedModel] | None = None) -> None:
        self.server = SeqinferServer(settings, models)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_sync(self, fn: Any) -> Any:
        """Run a plain function on the server's loop (to inspect state safely)."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self, grace: float = 5) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextmanager
def running_server(models: list[LoadedModel] | None = None, **overrides: Any) -> Iterator[ServerThread]:
    server = ServerThread(test_settings(**overrides), models).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def stub(address: str) -> Iterator[pb_grpc.SeqinferStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.SeqinferStub(channel)
