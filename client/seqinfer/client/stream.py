"""Pipelined steps of many sessions over one ``StreamSteps`` call.

A stream sends each step as soon as it is submitted, without waiting for the
previous reply, and matches replies to requests by ``request_id``. The
server keeps each session's steps in the order they were sent, so the client
only has to send them in order (one queue, one writer).

Steps of a :class:`~seqinfer.client.session.Session` are pipelined safely:
each carries ``expected_step`` = the counter the handle *predicts* after the
steps already in flight. If one step fails, the ones after it in flight fail
with ``StepGap`` instead of being applied out of order, and when the last of
them settles the handle adopts the server's counter again.

If the stream breaks with a retryable status (UNAVAILABLE), it is reopened
with backoff and every unanswered step that carries ``expected_step`` is
sent again, in its original order, with its original ``request_id``: the
server applies the ones it never got and replays the cached reply for the
rest, so no step is applied twice. Unanswered steps without
``expected_step`` cannot be resent safely and fail with the stream's error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from seqinfer.client import messages
from seqinfer.client.datatypes import StepOutput
from seqinfer.client.errors import (
    Cancelled,
    DeadlineExceeded,
    ReplyLost,
    SeqinferError,
    StepGap,
    Unavailable,
    from_rpc_error,
    from_status,
)
from seqinfer.client.messages import Inputs, OutputMode
from seqinfer.client.retry import Budget, RetryPolicy
from seqinfer.client.session import AsyncSession, Session, _SessionBase, needs_kind
from seqinfer.client.tensors import DTypeLike, InputKind, timesteps
from seqinfer.v1 import seqinfer_pb2 as pb

if TYPE_CHECKING:
    from seqinfer.client.aio import AsyncClient
    from seqinfer.client.client import Client

DEFAULT_MAX_IN_FLIGHT = 1024

_CLOSE = object()  # queue sentinel: half-close the request side


@dataclass
class _Pending:
    request: pb.StepRequest
    session: _SessionBase | None
    future: Any  # concurrent.futures.Future or asyncio.Future
    resent: bool = False


Settlement = tuple[Any, StepOutput | SeqinferError]


class _Book:
    """Requests in flight, in send order, and the session counters they move.

    Pure bookkeeping with no I/O, so that the sync and async streams share it.
    Methods return the futures to settle instead of settling them, so that
    the sync stream can run user callbacks outside its lock.
    """

    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}  # insertion order = send order
        self._outstanding: dict[str, int] = {}

    def build(
        self,
        target: _SessionBase | str,
        inputs: Inputs,
        kind: InputKind | None,
        *,
        expected_step: int | None,
        request_id: str | None,
        start: bool,
        model: str,
        model_version: str,
        reset: bool,
        end: bool,
        output_mode: OutputMode,
        return_state: bool,
        idle_ttl: float | None,
        dtype: DTypeLike,
    ) -> tuple[pb.StepRequest, _SessionBase | None]:
        """The request for one submitted step; advances a handle's predicted counter."""
        session = target if isinstance(target, _SessionBase) else None
        if session is not None:
            if expected_step is None:
                expected_step = session.step_count
            session_id = session.session_id
        else:
            session_id = str(target)
        req = messages.StepCall(
            session_id=session_id,
            inputs=inputs,
            expected_step=expected_step,
            request_id=request_id,
            start=start,
            model=model,
            model_version=model_version,
            reset=reset,
            end=end,
            output_mode=output_mode,
            return_state=return_state,
            idle_ttl=idle_ttl,
            dtype=dtype,
        ).to_proto(kind)
        if req.request_id in self.pending:
            raise ValueError(f"request_id {req.request_id!r} is already in flight")
        if session is not None:
            # Predict the counter after this step, so the next submitted step
            # can be pipelined with the right expected_step.
            t = timesteps(req.inputs)
            session.step_count = t if reset else req.expected_step + t
        return req, session

    def add(self, request: pb.StepRequest, session: _SessionBase | None, future: Any) -> None:
        """Records a request about to be sent."""
        self.pending[request.request_id] = _Pending(request, session, future)
        sid = request.session_id
        self._outstanding[sid] = self._outstanding.get(sid, 0) + 1

    def settle(self, result: pb.StepResult) -> Settlement | None:
        """The future and value for a reply; None for a reply to nothing we sent."""
        p = self.pending.pop(result.request_id, None)
        if p is None:
            return None
        value: StepOutput | SeqinferError
        if result.WhichOneof("outcome") == "response":
            value = StepOutput.from_proto(result.response)
        elif result.WhichOneof("outcome") == "error":
            value = _lost_or_error(p, from_status(result.error))
        else:
            value = SeqinferError("server sent a StepResult with neither response nor error")
        self._done(p, value)
        return p.future, value

    def fail(self, p: _Pending, error: SeqinferError) -> Settlement:
        """Gives up on one pending request."""
        self.pending.pop(p.request.request_id, None)
        self._done(p, error)
        return p.future, error

    def fail_all(self, error: SeqinferError) -> list[Settlement]:
        """Gives up on every pending request."""
        return [self.fail(p, error) for p in list(self.pending.values())]

    def split_for_resend(
        self, error: SeqinferError
    ) -> tuple[list[pb.StepRequest], list[Settlement]]:
        """After a broken stream: (requests safe to resend, in order; settlements of the rest)."""
        resend: list[pb.StepRequest] = []
        failed: list[Settlement] = []
        for p in list(self.pending.values()):
            if p.request.HasField("expected_step") and p.request.request_id:
                p.resent = True
                resend.append(p.request)
            else:
                failed.append(self.fail(p, error))
        return resend, failed

    def _done(self, p: _Pending, value: StepOutput | SeqinferError) -> None:
        sid = p.request.session_id
        left = self._outstanding.get(sid, 1) - 1
        if left:
            self._outstanding[sid] = left
        else:
            self._outstanding.pop(sid, None)
        session = p.session
        if session is None or left:
            # Later steps of this session are in flight; the handle's
            # predicted counter stays until the last of them settles.
            return
        if isinstance(value, StepOutput):
            session._applied(value)
        elif isinstance(value, StepGap | ReplyLost) and value.current_step is not None:
            session.step_count = value.current_step
        else:
            # A failed step applied nothing: back to the counter it expected.
            session.step_count = p.request.expected_step


def _lost_or_error(p: _Pending, error: SeqinferError) -> SeqinferError:
    """A resent step refused with a gap *past* it was applied before the break."""
    if not (p.resent and isinstance(error, StepGap)) or error.current_step is None:
        return error
    req = p.request
    if req.reset or error.current_step < req.expected_step + timesteps(req.inputs):
        return error
    return ReplyLost(
        f"step {req.request_id} was applied before the stream broke, but its reply was "
        f"lost (only a session's last reply is kept for replay); session {req.session_id} "
        f"is at step {error.current_step}",
        metadata=error.metadata,
    )


def _apply(settlements: list[Settlement]) -> None:
    for future, value in settlements:
        if future.done():  # cancelled by the caller
            continue
        if isinstance(value, SeqinferError):
            future.set_exception(value)
        else:
            future.set_result(value)


class _StreamBase:
    """Retry decisions shared by the sync and async streams."""

    def __init__(self, policy: RetryPolicy, timeout: float | None) -> None:
        self._policy = policy
        # The stream's deadline covers all reconnects; attempt_timeout does
        # not apply to a stream, whose life is as long as the caller wants.
        self._budget = Budget(timeout, RetryPolicy(max_attempts=policy.max_attempts))
        self._book = _Book()
        self._failures = 0  # consecutive breaks without a reply in between
        self._half_closed = False
        self._cancelled = False
        self._error: SeqinferError | None = None  # set once the stream is dead

    def _retry_delay(self, error: SeqinferError) -> float | None:
        """Backoff before reopening after ``error``, or None to give up."""
        if self._cancelled:
            return None
        if self._half_closed and not self._book.pending:
            return None
        self._failures += 1
        if not self._policy.should_retry(error, self._failures):
            return None
        delay = self._policy.backoff(self._failures)
        return delay if self._budget.allows_wait(delay) else None

    def _call_timeout(self) -> float | None:
        left = self._budget.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("stream deadline passed")
        return left

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._half_closed or self._cancelled:
            raise RuntimeError("the stream is closed")


class StepStream(_StreamBase):
    """A sync pipelined stream; create with :meth:`Client.stream`.

    ``submit`` returns a ``concurrent.futures.Future``; a background thread
    reads replies and settles futures. Use as a context manager: leaving the
    block waits for every submitted step to settle (or cancels the stream if
    the block raised).
    """

    def __init__(
        self,
        client: Client,
        stub_call: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...],
        policy: RetryPolicy,
        *,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        super().__init__(policy, timeout)
        self._client = client
        self._stub_call = stub_call
        self._metadata = metadata
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call: Any = None
        self._open_call([])
        self._reader = threading.Thread(
            target=self._read_loop, name="seqinfer-step-stream", daemon=True
        )
        self._reader.start()

    # -- public -----------------------------------------------------------

    def submit(
        self,
        session: Session | str,
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
    ) -> concurrent.futures.Future[StepOutput]:
        """Sends one step now and returns a future for its reply.

        ``session`` is a :class:`Session` handle (expected_step tracked for
        you, so the step is safe to resend) or a bare session id (then pass
        ``expected_step`` yourself to make it resendable). Blocks while
        ``max_in_flight`` steps are unanswered. The future's exception is a
        :class:`SeqinferError` subclass for a failed step.
        """
        kind = None
        if isinstance(session, Session) and needs_kind(inputs):
            kind = self._client._input_kind(session.model, session.model_version)
        self._slots.acquire()
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            with self._lock:
                self._check_open()
                req, handle = self._book.build(
                    session, inputs, kind, expected_step=expected_step, request_id=request_id,
                    start=start, model=model, model_version=model_version, reset=reset, end=end,
                    output_mode=output_mode, return_state=return_state, idle_ttl=idle_ttl,
                    dtype=dtype,
                )  # fmt: skip
                self._book.add(req, handle, future)
                self._queue.put(req)
        except BaseException as exc:
            future.set_exception(exc)  # releases the slot
            raise
        return future

    def step(self, session: Session | str, inputs: Inputs, **kwargs: Any) -> StepOutput:
        """``submit(...).result()``: one step, waiting for its reply."""
        return self.submit(session, inputs, **kwargs).result()

    def close(self, timeout: float | None = None) -> None:
        """Stops sending and waits until every submitted step has settled."""
        with self._lock:
            if not self._half_closed:
                self._half_closed = True
                self._queue.put(_CLOSE)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.cancel()
            raise DeadlineExceeded("stream did not finish within the close timeout")

    def cancel(self) -> None:
        """Abandons the stream; unanswered steps fail with ``Cancelled``."""
        with self._lock:
            self._cancelled = True
            self._queue.put(_CLOSE)
            call = self._call
        call.cancel()
        self._reader.join()

    def __enter__(self) -> StepStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()

    # -- internals ----------------------------------------------------------

    def _open_call(self, resend: list[pb.StepRequest]) -> None:
        """Starts a StreamSteps call fed from a new queue. Caller holds the lock."""
        old = self._queue
        old.put(_CLOSE)  # unblock the previous call's request iterator
        self._queue = queue.SimpleQueue()
        for req in resend:
            self._queue.put(req)
        if self._half_closed:
            self._queue.put(_CLOSE)
        self._call = self._stub_call(
            _drain(self._queue), timeout=self._call_timeout(), metadata=self._metadata
        )

    def _read_loop(self) -> None:
        while True:
            call = self._call
            error: SeqinferError | None = None
            try:
                for result in call:
                    with self._lock:
                        self._failures = 0
                        settled = self._book.settle(result)
                    if settled is not None:
                        _apply([settled])
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            with self._lock:
                if error is None:
                    if not self._book.pending and (self._half_closed or self._cancelled):
                        return
                    # The server ended the stream with steps unanswered (or
                    # before we closed): treat it as a break.
                    error = Unavailable("server ended the stream early")
                if self._cancelled:
                    error = Cancelled("stream cancelled")
                delay = self._retry_delay(error)
                if delay is None:
                    self._error = error
                    self._queue.put(_CLOSE)
                    settlements = self._book.fail_all(error)
            if delay is None:
                _apply(settlements)
                return
            threading.Event().wait(delay)
            with self._lock:
                resend, settlements = self._book.split_for_resend(error)
                try:
                    if self._cancelled:
                        raise Cancelled("stream cancelled")
                    self._open_call(resend)
                except SeqinferError as exc:
                    self._error = exc
                    settlements += self._book.fail_all(exc)
            _apply(settlements)
            if self._error is not None:
                return


def _drain(q: queue.SimpleQueue[Any]) -> Any:
    """The request iterator of one call: yields queued requests until _CLOSE."""
    while True:
        item = q.get()
        if item is _CLOSE:
            return
        yield item


class AsyncStepStream(_StreamBase):
    """An asyncio pipelined stream; create with ``AsyncClient.stream()``.

    Use as ``async with client.stream() as s: out = await s.step(sess, x)``;
    ``await s.submit(...)`` returns an ``asyncio.Future`` without waiting for
    the reply, for pipelining from one task.
    """

    def __init__(
        self,
        client: AsyncClient,
        stub_call: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...],
        policy: RetryPolicy,
        *,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        super().__init__(policy, timeout)
        self._client = client
        self._stub_call = stub_call
        self._metadata = metadata
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._call: Any = None
        self._writer: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> AsyncStepStream:
        """Opens the call; ``async with`` does this for you."""
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
        await self.start()
        kind = None
        if isinstance(session, AsyncSession) and needs_kind(inputs):
            kind = await self._client._input_kind(session.model, session.model_version)
        await self._slots.acquire()
        future: asyncio.Future[StepOutput] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            self._check_open()
            req, handle = self._book.build(
                session, inputs, kind, expected_step=expected_step, request_id=request_id,
                start=start, model=model, model_version=model_version, reset=reset, end=end,
                output_mode=output_mode, return_state=return_state, idle_ttl=idle_ttl,
                dtype=dtype,
            )  # fmt: skip
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
            self._queue.put_nowait(_CLOSE)
        if self._runner is not None:
            await self._runner

    async def cancel(self) -> None:
        """Abandons the stream; unanswered steps fail with ``Cancelled``."""
        self._cancelled = True
        self._queue.put_nowait(_CLOSE)
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

    def _open_call(self, resend: list[pb.StepRequest]) -> None:
        self._queue.put_nowait(_CLOSE)  # stop the previous writer
        self._queue = asyncio.Queue()
        for req in resend:
            self._queue.put_nowait(req)
        if self._half_closed:
            self._queue.put_nowait(_CLOSE)
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
                    self._failures = 0
                    settled = self._book.settle(result)
                    if settled is not None:
                        _apply([settled])
            except grpc.aio.AioRpcError as exc:
                error = _aio_stream_error(exc)
            except asyncio.CancelledError:
                # The runner task itself was cancelled (e.g. loop shutdown):
                # settle every future so no caller waits forever, then obey.
                self._cancelled = True
                self._error = Cancelled("stream cancelled")
                call.cancel()
                _apply(self._book.fail_all(self._error))
                raise
            if error is None:
                if not self._book.pending and (self._half_closed or self._cancelled):
                    return
                error = Unavailable("server ended the stream early")
            if self._cancelled:
                error = Cancelled("stream cancelled")
            delay = self._retry_delay(error)
            if delay is None:
                self._error = error
                self._queue.put_nowait(_CLOSE)
                _apply(self._book.fail_all(error))
                return
            await asyncio.sleep(delay)
            resend, settlements = self._book.split_for_resend(error)
            try:
                if self._cancelled:
                    raise Cancelled("stream cancelled")
                self._open_call(resend)
            except SeqinferError as exc:
                self._error = exc
                settlements += self._book.fail_all(exc)
            _apply(settlements)
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
    """Sends queued requests in order on one call until _CLOSE."""
    try:
        while True:
            item = await q.get()
            if item is _CLOSE:
                await call.done_writing()
                return
            await call.write(item)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        # The call broke; the reader sees why and decides about resending.
        return
