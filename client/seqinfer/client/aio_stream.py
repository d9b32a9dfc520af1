"""Pipelined steps of many sessions over one ``StreamSteps`` call: the asyncio stream.

The twin of :class:`~seqinfer.client.stream.StepStream`, with the same
decisions (:mod:`seqinfer.client.streamcore`) and bookkeeping
(:mod:`seqinfer.client.book`); only the I/O differs: a writer task feeds
the call from an ``asyncio.Queue`` and a runner task reads replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from seqinfer.client.book import apply
from seqinfer.client.datatypes import StepOutput
from seqinfer.client.errors import Cancelled, SeqinferError, Unavailable, from_rpc_error
from seqinfer.client.handle import AsyncSessionOwner
from seqinfer.client.messages import Inputs, OutputMode, step_options
from seqinfer.client.retry import RetryPolicy
from seqinfer.client.session import AsyncSession, needs_kind
from seqinfer.client.streamcore import CLOSE, DEFAULT_MAX_IN_FLIGHT, StreamCore
from seqinfer.client.tensors import DTypeLike
from seqinfer.v1 import seqinfer_pb2 as pb


class AsyncStepStream(StreamCore):
    """An asyncio pipelined stream; create with ``AsyncClient.stream()``.

    Use as ``async with client.stream() as s: out = await s.step(sess, x)``;
    ``await s.submit(...)`` returns an ``asyncio.Future`` without waiting for
    the reply, for pipelining from one task.
    """

    def __init__(
        self,
        client: AsyncSessionOwner,
        stub_call: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...],
        policy: RetryPolicy,
        *,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``ready``: awaited before the call first opens (the client's ``addresses`` wait)."""
        super().__init__(policy, timeout)
        self._client = client
        self._ready = ready
        self._stub_call = stub_call
        self._metadata = metadata
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._call: Any = None
        self._writer: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> AsyncStepStream:
        """Opens the call; ``async with`` does this for you."""
        if self._runner is None and self._ready is not None:
            await self._ready()  # another task's start may open the call meanwhile
        if self._runner is None:
            self._open_call([])
            self._runner = asyncio.get_running_loop().create_task(self._run())
        return self

    async def submit(
        self,
        session: AsyncSession | str,
        inputs: Inputs,
        *,
        expected_step: int | None = None,
        request_id: str | None = None,
        start: bool = False,
        model: str = "",
        model_version: str = "",
        reset: bool = False,
        end: bool = False,
        output_mode: OutputMode = "last",
        return_state: bool = False,
        idle_ttl: float | None = None,
        dtype: DTypeLike = None,
    ) -> asyncio.Future[StepOutput]:
        """Queues one step for sending and returns a future for its reply.

        Waits only while ``max_in_flight`` steps are unanswered. See
        :meth:`StepStream.submit` for the arguments.
        """
        options = step_options(locals())
        await self.start()
        kind = None
        if isinstance(session, AsyncSession) and needs_kind(inputs):
            kind = await self._client.input_kind(session.model, session.model_version)
        await self._slots.acquire()
        future: asyncio.Future[StepOutput] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            self._check_open()
            req, handle = self._book.build(session, inputs, kind, options)
        except BaseException:
            future.cancel()  # releases the slot
            raise
        self._book.add(req, handle, future)
        self._queue.put_nowait(req)
        return future

    async def step(self, session: AsyncSession | str, inputs: Inputs, **kwargs: Any) -> StepOutput:
        """One step, waiting for its reply (other tasks' steps stay pipelined)."""
        future = await self.submit(session, inputs, **kwargs)
        return await future

    async def aclose(self) -> None:
        """Stops sending and waits until every submitted step has settled."""
        if not self._half_closed:
            self._half_closed = True
            self._queue.put_nowait(CLOSE)
        if self._runner is not None:
            await self._runner

    async def cancel(self) -> None:
        """Abandons the stream; unanswered steps fail with ``Cancelled``."""
        self._cancelled = True
        self._queue.put_nowait(CLOSE)
        if self._call is not None:
            self._call.cancel()
        if self._runner is not None:
            await self._runner

    async def __aenter__(self) -> AsyncStepStream:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self.cancel()

    # -- I/O ----------------------------------------------------------------

    def _open_call(self, resend: list[pb.StepRequest]) -> None:
        self._queue.put_nowait(CLOSE)  # stop the previous writer
        self._queue = asyncio.Queue()
        for req in resend:
            self._queue.put_nowait(req)
        if self._half_closed:
            self._queue.put_nowait(CLOSE)
        self._call = self._stub_call(timeout=self._call_timeout(), metadata=self._metadata)
        self._writer = asyncio.get_running_loop().create_task(_write_loop(self._call, self._queue))

    async def _run(self) -> None:
        while True:
            call = self._call
            error: SeqinferError | None = None
            try:
                while True:
                    result = await call.read()
                    if result is grpc.aio.EOF:
                        break
                    settled = self._on_reply(result)
                    if settled is not None:
                        apply([settled])
            except grpc.aio.AioRpcError as exc:
                error = _aio_stream_error(exc)
            except asyncio.CancelledError:
                # The runner task itself was cancelled (e.g. loop shutdown):
                # settle every future so no caller waits forever, then obey.
                self._cancelled = True
                self._error = Cancelled("stream cancelled")
                call.cancel()
                apply(self._book.fail_all(self._error))
                raise
            ended = self._call_ended(error)
            if self._error is not None:
                self._queue.put_nowait(CLOSE)
            apply(ended.settlements)
            if ended.retry_after is None:
                return
            await asyncio.sleep(ended.retry_after)
            apply(self._reopen(self._open_call))
            if self._error is not None:
                return


def _aio_stream_error(exc: grpc.aio.AioRpcError) -> SeqinferError:
    """Decodes a broken aio stream's status, undoing a known grpc.aio misreport.

    grpc.aio (up to at least 1.85) replaces the server's status with
    ``INTERNAL: Internal error from Core`` when a write races with the end of
    the call (grpc/grpc#36066). Our server's own INTERNAL errors carry an
    ErrorInfo reason, so a reason-less one with that text is the misreport:
    treat it as the broken connection it almost always is, which makes it
    retryable (safe: resent steps carry expected_step).
    """
    error = from_rpc_error(exc)
    if (
        error.code is grpc.StatusCode.INTERNAL
        and not error.reason
        and error.message == "Internal error from Core"
    ):
        return Unavailable(
            "stream ended while a request was being written (grpc.aio reports this "
            "as INTERNAL: Internal error from Core, grpc/grpc#36066)"
        )
    return error


async def _write_loop(call: Any, q: asyncio.Queue[Any]) -> None:
    """Sends queued requests in order on one call until CLOSE."""
    try:
        while True:
            item = await q.get()
            if item is CLOSE:
                await call.done_writing()
                return
            await call.write(item)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        # The call broke; the reader sees why and decides about resending.
        return
