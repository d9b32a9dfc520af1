"""``EngineClient`` for a front-end process: the same commands, carried to the engine process.

Every command becomes an envelope (``ipc``) with a sequence number, and its
reply resolves the future waiting under that number. Steps are coalesced:
all the steps submitted in one event-loop turn leave in one message, sent
at the end of the turn (``call_soon``), so a front end under load sends the
engine a few large messages rather than one per request.

What differs from the in-process engine, and why it is acceptable here:

- A step is always accepted at once (``try_step`` never returns None), and
  a refusal arrives as its future's exception instead of being raised. The
  stream and the handlers treat both the same.
- A cancelled call (the caller went away, or its deadline passed) recalls
  its step: the seq goes to the engine in a ``cancel`` message, coalesced
  like steps, and a step still queued there is dropped unapplied, as in one
  process. A step already computing is applied; the client's
  ``expected_step`` retry tells an applied step from one that was not.
- ``held_bytes`` of a step, which a stream counts against its bounds, is
  its input bytes plus an upper bound of its reply over every served model
  (the front end does not know which model a session belongs to; it learns
  the models' reply sizes once, at start): larger than the engine's exact
  figure, never smaller, so a stream's memory bound holds across processes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from typing import Any

import zmq
import zmq.asyncio

from seqinfer.service import ipc
from seqinfer.service.engine import OutputMode
from seqinfer.service.engine_client import Admitted
from seqinfer.service.errors import draining
from seqinfer.service.inputs import OUTPUT_MODES
from seqinfer.service.protocol import (
    ExportReply,
    ForkCommand,
    ImportCommand,
    ModelInfo,
    OpenCommand,
    SessionInfo,
    StepBatch,
    StepBatchReply,
    StepCommand,
)
from seqinfer.service.replies import ReplyShape, result_bytes
from seqinfer.v1 import seqinfer_pb2 as pb

log = logging.getLogger(__name__)
SHUTDOWN_LINGER_MS = 1000
# Bytes per element of a reply's outputs, by the model's DType: a bfloat16
# model's outputs go out as float32 (numpy has no bfloat16).
_OUTPUT_ITEMSIZE: dict[int, int] = {
    pb.DTYPE_FLOAT32: 4,
    pb.DTYPE_FLOAT64: 8,
    pb.DTYPE_FLOAT16: 2,
    pb.DTYPE_BFLOAT16: 4,
}


def largest_reply(models: list[ModelInfo]) -> ReplyShape:
    """The largest output row and state over ``models``: a reply bound for any session."""
    return ReplyShape(
        max(m.output_size * _OUTPUT_ITEMSIZE.get(m.dtype, 8) for m in models),
        max(m.state_bytes_per_session for m in models),
    )


class RemoteEngine:
    def __init__(self, socket_path: str) -> None:
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(f"ipc://{socket_path}")
        self._seq = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._steps: list[tuple[int, StepCommand]] = []
        self._recalls: list[int] = []  # seqs of cancelled steps, sent with the next flush
        self._flush_scheduled = False
        self._receiver: asyncio.Task[None] | None = None
        self.draining = False
        self._reply_shape: ReplyShape | None = None

    async def start(self) -> None:
        self._receiver = asyncio.get_running_loop().create_task(self._receive())
        self._reply_shape = largest_reply(await self.models())

    async def shutdown(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
        # A short linger, so that what was sent last (the final metrics) still
        # leaves; bounded, because the engine may be gone.
        self._socket.close(linger=SHUTDOWN_LINGER_MS)
        self._context.term()

    def send_metrics(self, frontend: int, snapshot: object, tenants: object) -> None:
        """One ``("metrics", ...)`` envelope of the front end's counters; never answered."""
        self._socket.send(ipc.encode(("metrics", frontend, snapshot, tenants)))

    def begin_drain(self) -> None:
        self.draining = True

    async def _receive(self) -> None:
        while True:
            kind, replies = ipc.decode(await self._socket.recv())
            assert kind == "replies"
            for seq, reply in replies:
                future = self._pending.pop(seq, None)
                if future is None or future.done():
                    continue  # the call was cancelled meanwhile
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        steps, self._steps = self._steps, []
        recalls, self._recalls = self._recalls, []
        # Steps first: a recall of a step flushed in the same turn must reach
        # the engine after the step (one socket keeps the order).
        if steps:
            self._socket.send(ipc.encode_steps(steps))
        if recalls:
            self._socket.send(ipc.encode(("cancel", recalls)))

    def _recall_if_cancelled(self, seq: int, future: asyncio.Future[Any]) -> None:
        # A reply pops its seq first, so a seq still pending here was cancelled.
        if future.cancelled() and self._pending.pop(seq, None) is not None:
            self._recalls.append(seq)
            self._schedule_flush()

    async def _call(self, method: str, *args: Any) -> Any:
        seq = next(self._seq)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        await self._socket.send(ipc.encode(("call", seq, method, args)))
        try:
            return await future
        finally:
            self._pending.pop(seq, None)

    # ----------------------------------------------------- EngineClient --

    async def models(self, tenant: str = "") -> list[ModelInfo]:
        result: list[ModelInfo] = await self._call("models", tenant)
        return result

    async def model(self, name: str, version: str = "", tenant: str = "") -> ModelInfo:
        result: ModelInfo = await self._call("model", name, version, tenant)
        return result

    async def open(self, command: OpenCommand) -> SessionInfo:
        self._check_open()
        result: SessionInfo = await self._call("open", command)
        return result

    async def get(self, session_id: str, tenant: str = "") -> SessionInfo:
        result: SessionInfo = await self._call("get", session_id, tenant)
        return result

    async def close(self, session_id: str, tenant: str = "") -> int:
        result: int = await self._call("close", session_id, tenant)
        return result

    async def fork(self, command: ForkCommand) -> SessionInfo:
        self._check_open()
        result: SessionInfo = await self._call("fork", command)
        return result

    async def export(self, session_id: str, tenant: str = "") -> ExportReply:
        result: ExportReply = await self._call("export", session_id, tenant)
        return result

    async def import_state(self, command: ImportCommand) -> SessionInfo:
        self._check_open()
        result: SessionInfo = await self._call("import_state", command)
        return result

    def try_step(self, command: StepCommand) -> Admitted:
        self._check_open()
        seq = next(self._seq)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        future.add_done_callback(functools.partial(self._recall_if_cancelled, seq))
        self._steps.append((seq, command))
        self._schedule_flush()
        return Admitted(future, len(command.inputs.data) + self._reply_bound(command))

    def _reply_bound(self, command: StepCommand) -> int:
        assert self._reply_shape is not None, "RemoteEngine.start() first"
        shape = command.inputs.shape
        timesteps = int(shape[0]) if len(shape) else 0
        # An unknown mode is refused by the engine; bound it as the largest.
        mode = OUTPUT_MODES.get(command.output_mode, OutputMode.ALL)
        ids = len(command.session_id.encode()) + len(command.request_id.encode())
        return result_bytes(self._reply_shape, timesteps, mode, command.return_state, ids)

    async def step(self, command: StepCommand) -> Admitted:
        return self.try_step(command)

    async def step_batch(self, batch: StepBatch) -> StepBatchReply:
        self._check_open()
        result: StepBatchReply = await self._call("step_batch", batch)
        return result

    def _check_open(self) -> None:
        if self.draining:
            raise draining()
