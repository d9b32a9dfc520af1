"""Domain exceptions.

Domain code raises these; ``seqinfer.service.status`` is the one place that
turns them into gRPC statuses. Each carries the machine-readable reason that
the contract's ``ErrorReason`` enum names, so the mapping is a table, not a
chain of ``isinstance`` checks.
"""

from __future__ import annotations

import grpc


class SeqinferError(Exception):
    """Base of every error a caller can cause or observe."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL_ERROR"

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}


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
