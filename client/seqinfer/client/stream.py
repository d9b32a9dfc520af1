"""Pipelined steps of many sessions over one ``StreamSteps`` call: the sync stream.

A stream sends each step as soon as it is submitted, without waiting for the
previous reply, and matches replies to requests by ``request_id``. The
server keeps each session's steps in the order they were sent, so the client
only has to send them in order (one queue, one writer).

What to resend after a break, and when to give up, is decided in
:mod:`seqinfer.client.streamcore`; what a reply does to a handle's counter
in :mod:`seqinfer.client.book`. This module is the public signature plus
the I/O: a queue feeding grpc's request iterator and a reader thread.
:class:`AsyncStepStream` (in :mod:`seqinfer.client.aio_stream`) is its
asyncio twin.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from seqinfer.client.aio_stream import AsyncStepStream
from seqinfer.client.book import apply
from seqinfer.client.datatypes import StepOutput
from seqinfer.client.errors import DeadlineExceeded, SeqinferError, from_rpc_error
from seqinfer.client.handle import SessionOwner
from seqinfer.client.messages import Inputs, OutputMode, step_options
from seqinfer.client.retry import RetryPolicy
from seqinfer.client.session import Session, needs_kind
from seqinfer.client.streamcore import CLOSE, DEFAULT_MAX_IN_FLIGHT, StreamCore
from seqinfer.client.tensors import DTypeLike
from seqinfer.v1 import seqinfer_pb2 as pb

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "AsyncStepStream", "StepStream"]


class StepStream(StreamCore):
    """A sync pipelined stream; create with :meth:`Client.stream`.

    ``submit`` returns a ``concurrent.futures.Future``; a background thread
    reads replies and settles futures. Use as a context manager: leaving the
    block waits for every submitted step to settle (or cancels the stream if
    the block raised).
    """

    def __init__(
        self,
        client: SessionOwner,
        stub_call: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...],
        policy: RetryPolicy,
        *,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """``ready``: called before the call opens (the client's ``addresses`` wait)."""
        super().__init__(policy, timeout)
        self._client = client
        self._stub_call = stub_call
        self._metadata = metadata
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call: Any = None
        if ready is not None:
            ready()
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
        options = step_options(locals())
        kind = None
        if isinstance(session, Session) and needs_kind(inputs):
            kind = self._client.input_kind(session.model, session.model_version)
        self._slots.acquire()
        future: concurrent.futures.Future[StepOutput] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            with self._lock:
                self._check_open()
                req, handle = self._book.build(session, inputs, kind, options)
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
                self._queue.put(CLOSE)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.cancel()
            raise DeadlineExceeded("stream did not finish within the close timeout")

    def cancel(self) -> None:
        """Abandons the stream; unanswered steps fail with ``Cancelled``."""
        with self._lock:
            self._cancelled = True
            self._queue.put(CLOSE)
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

    # -- I/O ----------------------------------------------------------------

    def _open_call(self, resend: list[pb.StepRequest]) -> None:
        """Starts a StreamSteps call fed from a new queue. Caller holds the lock."""
        old = self._queue
        old.put(CLOSE)  # unblock the previous call's request iterator
        self._queue = queue.SimpleQueue()
        for req in resend:
            self._queue.put(req)
        if self._half_closed:
            self._queue.put(CLOSE)
        self._call = self._stub_call(
            _drain(self._queue), timeout=self._call_timeout(), metadata=self._metadata
        )

    def _read_loop(self) -> None:
        while True:
            error: SeqinferError | None = None
            try:
                for result in self._call:
                    with self._lock:
                        settled = self._on_reply(result)
                    if settled is not None:
                        apply([settled])
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            with self._lock:
                ended = self._call_ended(error)
                if self._error is not None:
                    self._queue.put(CLOSE)
            apply(ended.settlements)
            if ended.retry_after is None:
                return
            threading.Event().wait(ended.retry_after)
            with self._lock:
                settlements = self._reopen(self._open_call)
            apply(settlements)
            if self._error is not None:
                return


def _drain(q: queue.SimpleQueue[Any]) -> Any:
    """The request iterator of one call: yields queued requests until CLOSE."""
    while True:
        item = q.get()
        if item is CLOSE:
            return
        yield item
