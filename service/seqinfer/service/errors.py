"""Domain exceptions.

Domain code raises these; ``seqinfer.service.status`` is the one place that
turns them into gRPC statuses. Each carries the machine-readable reason that
the contract's ``ErrorReason`` enum names, so the mapping is a table, not a
chain of ``isinstance`` checks.

Messages and metadata often quote what the caller sent (a model name, a
shape). They travel in the call's trailers, and gRPC drops trailers beyond
its metadata limit (8 KiB by default) together with the real error; so every
quoted value goes through ``echo`` and every message and metadata value is
cut to a size far below that limit here, whatever the call site did.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

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


class SeqinferError(Exception):
    """Base of every error a caller can cause or observe."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL_ERROR"

    def __init__(self, message: str, **metadata: object) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {
            k: clip(str(v), MAX_METADATA_BYTES) for k, v in metadata.items()
        }


class SessionNotFound(SeqinferError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "SESSION_NOT_FOUND"


class SessionExpired(SessionNotFound):
    reason = "SESSION_EXPIRED"


class SessionEvicted(SessionNotFound):
    reason = "SESSION_EVICTED"


class SessionExists(SeqinferError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "SESSION_EXISTS"


class StepGap(SeqinferError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "STEP_GAP"


class StepLimit(SeqinferError):
    """The step would take the session's counter past ``bounds.MAX_STEP``."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "STEP_LIMIT"


class ModelNotFound(SeqinferError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "MODEL_NOT_FOUND"


class InvalidInput(SeqinferError):
    """Malformed request content. ``field`` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_INPUT"

    def __init__(self, field: str, message: str, **metadata: object) -> None:
        super().__init__(f"{field}: {message}", field=field, **metadata)
        self.field = field


class TooLarge(InvalidInput):
    reason = "TOO_LARGE"


class QueueFull(SeqinferError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"


class CapacityFull(SeqinferError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "CAPACITY_FULL"


class Draining(SeqinferError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DRAINING"


class DeadlineExceeded(SeqinferError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE"


class Cancelled(SeqinferError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED_BY_CLIENT"


class ModelLoadError(Exception):
    """A model directory could not be loaded. Not a caller error: raised at start-up."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
