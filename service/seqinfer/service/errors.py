"""Domain exceptions, free of gRPC.

Domain code (sessions, scheduler, inputs) raises these; ``seqinfer.service.status``
is the one place that turns them into gRPC statuses. The engine side must not
depend on the transport, so an exception carries only its ``reason``: the name
of a value of the contract's ``ErrorReason`` enum. Which gRPC code a reason gets
is a table in status.py, keyed by that enum. A subclass whose reason the enum
does not name is refused when it is defined, so a typo cannot reach a client as
an unknown reason.

Messages and metadata often quote what the caller sent (a model name, a
shape). They travel in the call's trailers, and gRPC drops trailers beyond
its metadata limit (8 KiB by default) together with the real error; so every
quoted value goes through ``echo`` and every message and metadata value is
cut to a size far below that limit here, whatever the call site did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

# The generated messages, not the gRPC stubs: this names the contract's reasons
# without importing grpc.
from seqinfer.v1 import seqinfer_pb2 as pb

# A status carries the message once (percent-encoded: up to 3 bytes per
# byte) and again in the details (base64), with at most a few metadata
# entries; with these caps the whole status stays under 5 KiB.
MAX_MESSAGE_BYTES = 512
MAX_METADATA_BYTES = 128
# How much of one quoted value an error shows.
ECHO_CHARS = 64
_ECHO_ITEMS = 8


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, marked with "…" when cut."""
    if len(text) * 4 <= max_bytes:  # no character takes more than 4 bytes
        return text
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    return raw[: max_bytes - 3].decode("utf-8", "ignore") + "…"


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """How a caller-supplied value is quoted in an error: its repr, at most ~``limit`` chars.

    Strings keep their start and say how long they were; sequences (a
    tensor's shape) show their first items and their length, without
    building the whole list.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        head = ", ".join(echo(v, limit) for v in value[:_ECHO_ITEMS])
        if len(value) <= _ECHO_ITEMS:
            return f"[{head}]"
        return f"[{head}, …] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# Every name of the contract's ErrorReason enum a domain error may carry.
REASONS: frozenset[str] = frozenset(pb.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def _require_known_reason(cls: type[SeqinferError]) -> None:
    if cls.reason not in REASONS:
        raise TypeError(
            f"{cls.__qualname__}.reason = {cls.reason!r} is not a seqinfer.v1.ErrorReason"
        )


class SeqinferError(Exception):
    """Base of every error a caller can cause or observe.

    ``reason`` is the ErrorReason name the error travels as; a bare
    ``SeqinferError`` is a server fault.
    """

    reason: ClassVar[str] = "INTERNAL_ERROR"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _require_known_reason(cls)
        _BY_REASON[cls.reason] = cls

    def __init__(self, message: str, **metadata: object) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {
            k: clip(str(v), MAX_METADATA_BYTES) for k, v in metadata.items()
        }

    def __reduce__(self) -> tuple[object, tuple[str, str, dict[str, str]]]:
        # Across the seam an error is its three plain values (see ``rebuild``).
        return rebuild, (self.reason, self.message, self.metadata)


# The class each reason is rebuilt as: the last one defined with it (so
# INTERNAL_ERROR gives InternalError, not the base).
_BY_REASON: dict[str, type[SeqinferError]] = {}


def rebuild(reason: str, message: str, metadata: dict[str, str]) -> SeqinferError:
    """The error whose whole state is these plain values, as another process sent it."""
    cls = _BY_REASON.get(reason, SeqinferError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message = clip(message, MAX_MESSAGE_BYTES)
    error.metadata = {k: clip(str(v), MAX_METADATA_BYTES) for k, v in metadata.items()}
    if isinstance(error, InvalidInput):
        error.field = error.metadata.get("field", "")
    return error


_require_known_reason(SeqinferError)  # __init_subclass__ sees subclasses only
_BY_REASON[SeqinferError.reason] = SeqinferError


class SessionNotFound(SeqinferError):
    reason = "SESSION_NOT_FOUND"


class SessionExpired(SessionNotFound):
    reason = "SESSION_EXPIRED"


class SessionEvicted(SessionNotFound):
    reason = "SESSION_EVICTED"


class SessionExists(SeqinferError):
    reason = "SESSION_EXISTS"


class StepGap(SeqinferError):
    reason = "STEP_GAP"


class StepLimit(SeqinferError):
    """The step would take the session's counter past ``bounds.MAX_STEP``."""

    reason = "STEP_LIMIT"


class ModelNotFound(SeqinferError):
    reason = "MODEL_NOT_FOUND"


class InvalidInput(SeqinferError):
    """Malformed request content. ``field`` names the offending field."""

    reason = "INVALID_INPUT"

    def __init__(self, field: str, message: str, **metadata: object) -> None:
        super().__init__(f"{field}: {message}", field=field, **metadata)
        self.field = field


class TooLarge(InvalidInput):
    reason = "TOO_LARGE"


class QueueFull(SeqinferError):
    reason = "QUEUE_FULL"


class CapacityFull(SeqinferError):
    reason = "CAPACITY_FULL"


class Draining(SeqinferError):
    reason = "DRAINING"


class DeadlineExceeded(SeqinferError):
    reason = "DEADLINE"


class TenantQuota(SeqinferError):
    """The caller's tenant is at one of its quotas (``auth.Tenant``)."""

    reason = "TENANT_QUOTA"


class Unauthenticated(SeqinferError):
    reason = "UNAUTHENTICATED"


class StoreUnavailable(SeqinferError):
    """Write-through: the state store did not commit a batch, so its replies are
    withheld (the steps are applied in memory; a retry with ``expected_step``
    replays once they are committed)."""

    reason = "STORE_UNAVAILABLE"


def draining() -> Draining:
    """The refusal of new work while the server (or this front end) drains."""
    return Draining("server is shutting down; retry on another replica")


class Cancelled(SeqinferError):
    reason = "CANCELLED_BY_CLIENT"


class InternalError(SeqinferError):
    """A server fault, never the caller's."""

    reason = "INTERNAL_ERROR"


def internal(exc: BaseException) -> InternalError:
    """A server fault, reported without leaking internals beyond the exception type.

    The text of an engine or encoding failure may name paths, addresses or
    device handles; the caller gets the type, the server log the rest.
    """
    return InternalError(f"internal error ({type(exc).__name__}); see server log")


class ModelLoadError(Exception):
    """A model directory could not be loaded. Not a caller error: raised at start-up."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
