"""Running a real seqinfer server on 127.0.0.1 with an ephemeral port, for tests.

With ``SEQINFER_TEST_FRONTEND=remote`` in the environment, every server
started here serves gRPC the way a front-end process does: a ``GrpcFront``
over a ``RemoteEngine``, whose envelopes cross a real ZeroMQ ``ipc://``
socket to an ``EngineHost`` over the engine. Both halves run on the
server's loop, so a test can still gate the engine and inspect its
runtimes; what it exercises is everything between the processes of
``serve --frontends K`` except the process boundary itself (the envelopes
are encoded and decoded all the same). ``make test`` runs the files in
``tests/integration/remote_mode.txt`` once more this way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
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

    def __init__(
        self, settings: Settings, models: list[LoadedModel] | None = None, observer: Any = None
    ) -> None:
        self.server = SeqinferServer(settings, models, observer)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        if os.environ.get("SEQINFER_TEST_FRONTEND") == "remote":
            self.call(self._start_remote())
        else:
            self.call(self.server.start())
        return self

    async def _start_remote(self) -> None:
        from seqinfer.service.engine_process import EngineHost
        from seqinfer.service.grpc_front import GrpcFront
        from seqinfer.service.remote_engine import RemoteEngine
        from seqinfer.service.security import server_tls, token_table

        server = self.server
        settings = server.settings
        tls, tokens = server_tls(settings), token_table(settings)
        await server.start_engine(tokens)
        assert server.engine is not None
        self._socket_dir = tempfile.TemporaryDirectory(prefix="seqinfer-test-ipc-")
        path = os.path.join(self._socket_dir.name, "engine.sock")
        self._host = EngineHost(server.engine, path)
        self._serving = asyncio.get_running_loop().create_task(self._host.serve())
        self._remote = RemoteEngine(path)
        await self._remote.start()
        front = GrpcFront(settings, self._remote, server.observer, tokens, tls)
        await front.start()
        server.port = front.port
        server._front = front
        logging.getLogger("seqinfer.service.server").info(
            "serving on 127.0.0.1:%d through a front end over ipc (tests)", front.port
        )

    async def _stop_remote(self) -> None:
        self._remote.begin_drain()
        await self._remote.shutdown()
        self._serving.cancel()
        self._host.close()
        self._socket_dir.cleanup()

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
        if not self._thread.is_alive():
            return  # stopped already (a test may stop it early)
        self.call(self.server.stop(grace))
        if hasattr(self, "_remote"):
            self.call(self._stop_remote())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextmanager
def running_server(
    models: list[LoadedModel] | None = None, observer: Any = None, **overrides: Any
) -> Iterator[ServerThread]:
    server = ServerThread(test_settings(**overrides), models, observer).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def stub(address: str) -> Iterator[pb_grpc.SeqinferStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.SeqinferStub(channel)


def to_tensor(array: Any) -> Any:
    """numpy → proto Tensor (little-endian raw bytes)."""
    import numpy as np

    from seqinfer.v1 import seqinfer_pb2 as pb

    codes = {
        np.dtype("float32"): pb.DTYPE_FLOAT32,
        np.dtype("float64"): pb.DTYPE_FLOAT64,
        np.dtype("float16"): pb.DTYPE_FLOAT16,
        np.dtype("int32"): pb.DTYPE_INT32,
        np.dtype("int64"): pb.DTYPE_INT64,
    }
    array = np.ascontiguousarray(array)
    return pb.Tensor(dtype=codes[array.dtype], shape=list(array.shape), data=array.tobytes())


def from_tensor(tensor: Any) -> Any:
    import numpy as np

    from seqinfer.v1 import seqinfer_pb2 as pb

    dtypes = {
        pb.DTYPE_FLOAT32: "<f4",
        pb.DTYPE_FLOAT64: "<f8",
        pb.DTYPE_FLOAT16: "<f2",
        pb.DTYPE_INT32: "<i4",
        pb.DTYPE_INT64: "<i8",
    }
    return np.frombuffer(tensor.data, dtype=dtypes[tensor.dtype]).reshape(list(tensor.shape))


def reference_modules(model: LoadedModel) -> tuple[Any, Any, Any]:
    """(embedding | None, nn.GRU, head | None) holding the model's weights, for comparisons."""
    import torch

    spec = model.spec
    t = model.tensors
    embedding = None
    if spec.input_kind == "tokens":
        embedding = torch.nn.Embedding(spec.input_size, spec.embedding_dim)
        embedding.weight.data.copy_(t["embedding.weight"])
    gru = torch.nn.GRU(spec.gru_input_size, spec.hidden_size, spec.num_layers)
    for name, param in gru.named_parameters():
        param.data.copy_(t[f"gru.{name}"])
    head = None
    if spec.has_head:
        head = torch.nn.Linear(spec.hidden_size, spec.output_size)
        head.weight.data.copy_(t["head.weight"])
        head.bias.data.copy_(t["head.bias"])
    return embedding, gru, head


def reference_run(model: LoadedModel, inputs: Any, h0: Any = None) -> tuple[Any, Any]:
    """torch.nn.GRU over a whole sequence: (outputs [T, out], final state [L, H]) as numpy."""
    import numpy as np
    import torch

    embedding, gru, head = reference_modules(model)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(inputs))
        x = embedding(x.long()) if embedding is not None else x.float()
        h = None if h0 is None else torch.from_numpy(np.asarray(h0)).unsqueeze(1)
        out, hn = gru(x.unsqueeze(1), h)
        top = out.squeeze(1)
        y = head(top) if head is not None else top
        if model.spec.output_kind == "probabilities":
            y = torch.softmax(y, -1)
    return y.numpy(), hn.squeeze(1).numpy()


def make_model(
    input_kind: str = "dense",
    *,
    input_size: int = 8,
    hidden: int = 16,
    layers: int = 2,
    output: int = 5,
    output_kind: str = "logits",
    embedding_dim: int = 6,
    name: str = "tiny",
    version: str = "1",
    seed: int = 0,
) -> LoadedModel:
    """A small random model, so tests run fast and cover every shape option."""
    import torch

    from seqinfer.service.models.spec import InputKind, ModelSpec, OutputKind

    spec = ModelSpec(
        name=name,
        version=version,
        input_kind=InputKind(input_kind),
        input_size=input_size,
        hidden_size=hidden,
        num_layers=layers,
        output_kind=OutputKind(output_kind),
        output_size=output if output_kind != "hidden" else hidden,
        embedding_dim=embedding_dim if input_kind == "tokens" else 0,
    )
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(s, generator=g) * 0.4 for k, s in spec.expected_shapes().items()}
    return LoadedModel(spec, tensors)


def error_reason(error: Any) -> tuple[Any, str, dict[str, str]]:
    """(grpc code, ErrorInfo reason, metadata) of a failed call."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "seqinfer.v1"
            return error.code(), info.reason, dict(info.metadata)
    raise AssertionError("status carries no ErrorInfo")


def status_reason(status: Any) -> tuple[int, str, dict[str, str]]:
    """(code, reason, metadata) of a google.rpc.Status from a StepResult."""
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return status.code, info.reason, dict(info.metadata)


class EngineGate:
    """Holds every batch of a running server's engines until the test opens it.

    A test that needs work in flight (drain, close during a step, deadlines in
    the queue) installs the gate, sends the work, waits until the engine has
    *entered* the batches it expects, acts, then opens the gate. Nothing waits
    on time: ``wait_entered`` waits for an event and fails after ``timeout``.

    Installing it turns off the scheduler's inline path for the gated
    runtimes, because a batch held on the event-loop thread would stop the
    whole server (health, drain, every other RPC) instead of one batch.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._changed = threading.Condition()
        self.batches = 0  # batches that reached the gate
        self.items = 0  # items in those batches
        self.sizes: list[int] = []

    def install(self, server: ServerThread, models: tuple[str, ...] = ()) -> EngineGate:
        """Gate the engines of ``models`` (names; all when empty)."""

        def patch() -> None:
            for runtime in server.server.runtimes:
                if models and runtime.spec.name not in models:
                    continue
                runtime.scheduler.inline_max_timesteps = 0
                runtime.engine.run = self._gated(runtime.engine.run)  # type: ignore[method-assign]

        server.run_sync(patch)
        return self

    def _gated(self, run: Any) -> Any:
        def gated(slab: Any, items: list[Any]) -> Any:
            with self._changed:
                self.batches += 1
                self.items += len(items)
                self.sizes.append(len(items))
                self._changed.notify_all()
            # Bounded, so a failing test ends instead of hanging its server.
            self._open.wait(120)
            return run(slab, items)

        return gated

    def wait_entered(self, batches: int = 1, timeout: float = 60) -> None:
        """Block until ``batches`` batches have reached the gate in all."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.batches >= batches, timeout):
                raise AssertionError(f"{self.batches} of {batches} batches reached the gate")

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()


@contextmanager
def gated(server: ServerThread, *models: str) -> Iterator[EngineGate]:
    """An installed gate, opened on exit so the server can always stop."""
    gate = EngineGate().install(server, models)
    try:
        yield gate
    finally:
        gate.open()


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    """Poll a condition the server reaches by itself (a sweep, a queue filling).

    Not a sleep-then-assume: it returns as soon as the condition holds and
    fails loudly after a generous ``timeout``, so a quiet machine is never
    too fast for it and a loaded one only makes it slower.
    """
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
