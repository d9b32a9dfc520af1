"""Retry policy and the retry loops around one logical call.

A step is only safe to send twice because it carries ``request_id`` and
``expected_step``: the server applies it once and answers a repeat with the
cached reply. Callers therefore mark each logical call ``idempotent`` or
not, and only idempotent calls are retried.

Deadlines: ``timeout`` is the budget of the whole logical call, retries and
backoff included, so a caller's deadline means what it says. Each attempt
gets what is left (capped by ``attempt_timeout`` if set); a retry that could
not start before the deadline is not made.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from seqinfer.client.errors import DeadlineExceeded, SeqinferError

T = TypeVar("T")

# UNAVAILABLE: connection trouble or a draining server; nothing is lost by
# asking again. DEADLINE_EXCEEDED: only reached with budget left when an
# attempt timeout or the server's own deadline fired, and a step may have
# been applied, which the request cache makes harmless. CANCELLED: never
# this client's own cancel (the loops stop before asking), so the server or
# gRPC dropped the call: a call gRPC refused under overload, or one cut by a
# shutdown; for an idempotent call asking again is safe.
_DEFAULT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# QUEUE_FULL: the server refused the call before applying anything (a queue
# bound, or max_concurrent_rpcs calls in progress) and asks us to come back later.
_DEFAULT_REASONS = frozenset({"QUEUE_FULL"})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often to retry a failed idempotent call.

    Attributes:
        max_attempts: total attempts, the first included; 1 disables retries.
        initial_backoff: seconds before the first retry.
        max_backoff: cap on one backoff.
        multiplier: growth of the backoff per retry.
        jitter: fraction of each backoff drawn at random (0: none, 1: "full
            jitter"), so that many clients that failed together do not retry
            together.
        attempt_timeout: optional cap on one attempt, so that a hung
            connection is abandoned and retried within the overall timeout.
        retry_codes: status codes that are retried.
        retry_reasons: ErrorInfo reasons that are retried whatever their code.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    attempt_timeout: float | None = None
    retry_codes: frozenset[grpc.StatusCode] = field(default=_DEFAULT_CODES)
    retry_reasons: frozenset[str] = field(default=_DEFAULT_REASONS)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def should_retry(self, error: SeqinferError, attempt: int) -> bool:
        """Whether to retry after ``attempt`` (1-based) failed with ``error``."""
        if attempt >= self.max_attempts:
            return False
        return error.code in self.retry_codes or error.reason in self.retry_reasons

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng())


class Budget:
    """The deadline of one logical call; hands each attempt its timeout."""

    def __init__(self, timeout: float | None, policy: RetryPolicy) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._policy = policy

    def remaining(self) -> float | None:
        """Seconds left, or None without a deadline."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def attempt_timeout(self) -> float | None:
        """Timeout for the next attempt; raises DeadlineExceeded if none is left."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("deadline passed before the call could be (re)tried")
        cap = self._policy.attempt_timeout
        if left is None:
            return cap
        return left if cap is None else min(left, cap)

    def allows_wait(self, delay: float) -> bool:
        """Whether sleeping ``delay`` still leaves time for another attempt."""
        left = self.remaining()
        return left is None or delay < left


def call_with_retry(
    fn: Callable[[int, float | None], T],
    policy: RetryPolicy,
    timeout: float | None,
    *,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``fn(attempt, attempt_timeout)`` until it succeeds or must give up.

    ``fn`` raises ``SeqinferError`` on failure (already decoded).
    """
    budget = Budget(timeout, policy)
    attempt = 1
    last: SeqinferError | None = None
    while True:
        try:
            attempt_timeout = budget.attempt_timeout()
        except DeadlineExceeded:
            # Ran out while backing off: the last attempt's error says more
            # (and, unlike this one, that a step may have been sent).
            if last is None:
                raise
            raise last from None
        try:
            return fn(attempt, attempt_timeout)
        except SeqinferError as err:
            if not idempotent or not policy.should_retry(err, attempt):
                raise
            delay = policy.backoff(attempt)
            if not budget.allows_wait(delay):
                raise
            last = err
        sleep(delay)
        attempt += 1


async def acall_with_retry(
    fn: Callable[[int, float | None], Awaitable[T]],
    policy: RetryPolicy,
    timeout: float | None,
    *,
    idempotent: bool,
) -> T:
    """The asyncio twin of :func:`call_with_retry`."""
    budget = Budget(timeout, policy)
    attempt = 1
    last: SeqinferError | None = None
    while True:
        try:
            attempt_timeout = budget.attempt_timeout()
        except DeadlineExceeded:
            # Ran out while backing off: the last attempt's error says more
            # (and, unlike this one, that a step may have been sent).
            if last is None:
                raise
            raise last from None
        try:
            return await fn(attempt, attempt_timeout)
        except SeqinferError as err:
            if not idempotent or not policy.should_retry(err, attempt):
                raise
            delay = policy.backoff(attempt)
            if not budget.allows_wait(delay):
                raise
            last = err
        await asyncio.sleep(delay)
        attempt += 1
