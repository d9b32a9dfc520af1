"""Typed exceptions decoded from gRPC statuses.

The server attaches a ``google.rpc.ErrorInfo`` (domain "seqinfer.v1") to
every non-OK status; its ``reason`` picks the exception class here, so
callers can write ``except StepGap as e: e.current_step`` instead of parsing
messages. A status without ErrorInfo (e.g. UNAVAILABLE raised by gRPC itself
when the server is down) falls back to a class chosen by the status code.

The same decoding serves unary calls (from a ``grpc.RpcError``) and the
per-item ``google.rpc.Status`` inside ``StepResult.error`` of StreamSteps and
StepMany, so one ``except`` clause handles both.

This module deliberately does not import ``seqinfer.service.errors``: the
client must work without the server's dependencies installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "seqinfer.v1"

_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


class SeqinferError(Exception):
    """Any error status from a seqinfer server (or from the transport).

    Attributes:
        code: the gRPC status code.
        reason: the ErrorInfo reason (an ``ErrorReason`` name), or "" when the
            status carried none (transport errors).
        message: the status message.
        metadata: the ErrorInfo metadata (string to string).
    """

    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code if code is not None else self.default_code
        self.reason = reason if reason is not None else self.default_reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        super().__init__(message)

    def __str__(self) -> str:
        label = self.reason or self.code.name
        return f"{label}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r})"
        )


def _int_metadata(metadata: Mapping[str, str], key: str) -> int | None:
    raw = metadata.get(key)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


class SessionNotFound(SeqinferError):
    """No such session: never existed, closed, or (subclasses) expired/evicted."""

    default_code = grpc.StatusCode.NOT_FOUND
    default_reason = "SESSION_NOT_FOUND"


class SessionExpired(SessionNotFound):
    """The session passed its idle TTL."""

    default_reason = "SESSION_EXPIRED"


class SessionEvicted(SessionNotFound):
    """The session was evicted to make room for others."""

    default_reason = "SESSION_EVICTED"


class SessionExists(SeqinferError):
    """A session with this id is already open."""

    default_code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "SESSION_EXISTS"


class StepGap(SeqinferError):
    """``expected_step`` did not match; ``current_step`` is the server's counter."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "STEP_GAP"

    @property
    def current_step(self) -> int | None:
        """The session's step counter on the server, when the server said it."""
        return _int_metadata(self.metadata, "current_step")


class StepLimit(SeqinferError):
    """The step would take the session's counter past its maximum (2^53 - 1).

    Nothing was applied. Not a ``StepGap``: the counter is where the client
    thinks it is, it just cannot go further. Reset the session (``reset=True``)
    or import a state with a smaller step.
    """

    default_code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "STEP_LIMIT"

    @property
    def current_step(self) -> int | None:
        """The session's step counter on the server, when the server said it."""
        return _int_metadata(self.metadata, "current_step")

    @property
    def max_step(self) -> int | None:
        """The largest step counter the server keeps, when the server said it."""
        return _int_metadata(self.metadata, "max_step")


class ReplyLost(SeqinferError):
    """A step was applied (exactly once) but its reply was lost; no outputs.

    Raised only by streams: after a broken stream the client resends the
    unanswered steps, and the server replays a cached reply only for the
    *last* step of each session. An earlier resent step that the server had
    already applied comes back as STEP_GAP with a counter past it; the
    client reports that as ``ReplyLost`` rather than as a gap, because the
    step did take effect. ``current_step`` is the server's counter.
    """

    default_code = grpc.StatusCode.UNAVAILABLE

    @property
    def current_step(self) -> int | None:
        """The session's step counter on the server when the resend was refused."""
        raw = self.metadata.get("current_step")
        return int(raw) if raw is not None and raw.isdigit() else None


class ModelNotFound(SeqinferError):
    """No such model or version."""

    default_code = grpc.StatusCode.NOT_FOUND
    default_reason = "MODEL_NOT_FOUND"


class InvalidInput(SeqinferError):
    """Inputs, state, id or an option is malformed; ``field`` names which."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_INPUT"

    @property
    def field(self) -> str | None:
        """The offending request field, when the server named it."""
        return self.metadata.get("field")


class TooLarge(InvalidInput):
    """The message exceeds a size limit."""

    default_reason = "TOO_LARGE"


class ResourceExhausted(SeqinferError):
    """The server is out of some resource; see subclasses."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(ResourceExhausted):
    """The model's queue is full: nothing was applied, retry later."""

    default_reason = "QUEUE_FULL"


class CapacityFull(ResourceExhausted):
    """The model already has its maximum number of sessions open."""

    default_reason = "CAPACITY_FULL"


class TenantQuota(ResourceExhausted):
    """The caller's tenant is at one of its quotas; nothing was applied.

    ``quota`` names it (``max_sessions``, ``steps_per_second``);
    ``retry_after`` is how long to wait, when waiting helps.
    """

    default_reason = "TENANT_QUOTA"

    @property
    def quota(self) -> str | None:
        return self.metadata.get("quota")

    @property
    def retry_after(self) -> float | None:
        raw = self.metadata.get("retry_after_seconds")
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None


class Unauthenticated(SeqinferError):
    """The server requires a valid bearer token (``token=``) and got none, or a wrong one."""

    default_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unavailable(SeqinferError):
    """The server cannot be reached or is not serving."""

    default_code = grpc.StatusCode.UNAVAILABLE


class Draining(Unavailable):
    """The server is shutting down: retry on another replica."""

    default_reason = "DRAINING"


class StoreUnavailable(Unavailable):
    """Write-through: the server's state store could not commit the step.

    The step may be applied in memory; a retry with the same ``expected_step``
    and ``request_id`` (what session handles send) gets the reply, replayed,
    once the state is committed. Retried like any ``Unavailable``.
    """

    default_reason = "STORE_UNAVAILABLE"


class DeadlineExceeded(SeqinferError):
    """The deadline passed (client side, or server side before computing)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE"


class Cancelled(SeqinferError):
    """The call was cancelled."""

    default_code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED_BY_CLIENT"


class InternalError(SeqinferError):
    """A server fault, never caused by the caller."""

    default_code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL_ERROR"


BY_REASON: Mapping[str, type[SeqinferError]] = {
    cls.default_reason: cls
    for cls in (
        SessionNotFound,
        SessionExpired,
        SessionEvicted,
        SessionExists,
        StepGap,
        StepLimit,
        ModelNotFound,
        InvalidInput,
        TooLarge,
        QueueFull,
        CapacityFull,
        Draining,
        StoreUnavailable,
        DeadlineExceeded,
        Cancelled,
        InternalError,
        TenantQuota,
        Unauthenticated,
    )
}
"""The exception class of every ErrorReason the server sends (by reason name)."""

# Used when a status has no seqinfer ErrorInfo, e.g. errors made by gRPC.
_BY_CODE: dict[grpc.StatusCode, type[SeqinferError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.INTERNAL: InternalError,
}


def _make(
    code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str]
) -> SeqinferError:
    cls = BY_REASON.get(reason) or _BY_CODE.get(code, SeqinferError)
    # A status with no ErrorInfo must not pretend to carry a reason.
    return cls(message, code=code, reason=reason, metadata=metadata)


def _error_info(status: status_pb2.Status) -> tuple[str, dict[str, str]]:
    """(reason, metadata) of the seqinfer ErrorInfo in ``status``; ("", {}) if none."""
    fallback: tuple[str, dict[str, str]] = ("", {})
    for detail in status.details:
        if not detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            continue
        info = error_details_pb2.ErrorInfo()
        detail.Unpack(info)
        found = (info.reason, dict(info.metadata))
        if info.domain == ERROR_DOMAIN:
            return found
        # Another domain's ErrorInfo: keep looking, but use it if it is all there is.
        fallback = fallback if fallback[0] else found
    return fallback


def from_status(status: status_pb2.Status) -> SeqinferError:
    """The exception for a ``google.rpc.Status`` (e.g. ``StepResult.error``)."""
    code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, metadata = _error_info(status)
    return _make(code, status.message, reason, metadata)


def from_rpc_error(error: grpc.RpcError) -> SeqinferError:
    """The exception for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    call: Any = error
    code: grpc.StatusCode = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message: str = (call.details() if hasattr(call, "details") else None) or str(error)
    status = None
    if hasattr(call, "trailing_metadata"):
        try:
            status = rpc_status.from_call(call)
        except ValueError:
            # Code or message in the rich status disagree with the call's: a
            # proxy rewrote the status. Trust what the call says.
            status = None
    if status is None:
        return _make(code, message, "", {})
    reason, metadata = _error_info(status)
    return _make(code, message, reason, metadata)
