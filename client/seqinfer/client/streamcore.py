"""The reconnect state machine of a pipelined stream, as plain code.

A stream's ``StreamSteps`` call ends in one of three ways: cleanly, with
nothing left to answer; with a status worth retrying (UNAVAILABLE); or for
good. After a retryable break the stream is reopened with backoff and every
unanswered step that carries ``expected_step`` is sent again, in its
original order, with its original ``request_id``: the server applies the
ones it never got and replays the cached reply for the rest, so no step is
applied twice. Unanswered steps without ``expected_step`` cannot be resent
safely and fail with the stream's error.

:class:`StreamCore` makes those decisions; the sync stream (a reader
thread) and the async one (a task) only read replies, wait out the delay it
names, and open the next call when it asks them to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from seqinfer.client.book import Book, Settlement
from seqinfer.client.errors import Cancelled, DeadlineExceeded, SeqinferError, Unavailable
from seqinfer.client.retry import Budget, RetryPolicy
from seqinfer.v1 import seqinfer_pb2 as pb

DEFAULT_MAX_IN_FLIGHT = 1024

CLOSE = object()  # queue sentinel: half-close the request side


@dataclass
class CallEnded:
    """What to do after one call ended.

    Attributes:
        settlements: futures to settle now (outside any lock).
        retry_after: seconds to wait before :meth:`StreamCore.reopen`; None:
            the stream is over (finished, or dead with ``StreamCore.error``).
    """

    settlements: list[Settlement] = field(default_factory=list)
    retry_after: float | None = None


class StreamCore:
    """Retry decisions and the book of one stream, shared by the sync and async streams."""

    def __init__(self, policy: RetryPolicy, timeout: float | None) -> None:
        self._policy = policy
        # The stream's deadline covers all reconnects; attempt_timeout does
        # not apply to a stream, whose life is as long as the caller wants.
        self._budget = Budget(timeout, RetryPolicy(max_attempts=policy.max_attempts))
        self._book = Book()
        self._failures = 0  # consecutive breaks without a reply in between
        self._half_closed = False
        self._cancelled = False
        self._broken: SeqinferError | None = None  # why the last call ended, while retrying
        self._error: SeqinferError | None = None  # set once the stream is dead

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._half_closed or self._cancelled:
            raise RuntimeError("the stream is closed")

    def _call_timeout(self) -> float | None:
        left = self._budget.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("stream deadline passed")
        return left

    def _on_reply(self, result: pb.StepResult) -> Settlement | None:
        self._failures = 0
        return self._book.settle(result)

    def _call_ended(self, error: SeqinferError | None) -> CallEnded:
        """Decides after a call ended (``error`` None: the server closed it)."""
        if error is None:
            if not self._book.pending and (self._half_closed or self._cancelled):
                return CallEnded()
            # The server ended the stream with steps unanswered (or before we
            # closed): treat it as a break.
            error = Unavailable("server ended the stream early")
        if self._cancelled:
            error = Cancelled("stream cancelled")
        delay = self._retry_delay(error)
        if delay is None:
            self._error = error
            return CallEnded(self._book.fail_all(error))
        self._broken = error
        return CallEnded(retry_after=delay)

    def _reopen(self, open_call: Callable[[list[pb.StepRequest]], None]) -> list[Settlement]:
        """After the delay: resends what is safe on a new call, fails the rest.

        ``open_call(resend)`` starts the next call with ``resend`` queued
        first. Afterwards the stream is dead if ``_error`` is set.
        """
        assert self._broken is not None
        resend, settlements = self._book.split_for_resend(self._broken)
        try:
            if self._cancelled:
                raise Cancelled("stream cancelled")
            open_call(resend)
        except SeqinferError as exc:
            self._error = exc
            settlements += self._book.fail_all(exc)
        return settlements

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
