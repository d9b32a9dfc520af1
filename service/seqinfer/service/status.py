"""The one place where domain errors become gRPC statuses with an ErrorInfo detail.

Domain errors (errors.py) carry only an ``ErrorReason`` name; the gRPC code
each reason travels with is decided here, in one table keyed by the
contract's enum. The table must cover the enum exactly (checked at import),
so a reason added to the proto cannot reach the wire without a code, and a
code cannot be given to a reason the contract does not name.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from seqinfer.service.errors import SeqinferError
from seqinfer.v1 import seqinfer_pb2 as pb

DOMAIN = "seqinfer.v1"

_C = grpc.StatusCode
CODES: Mapping[pb.ErrorReason.ValueType, grpc.StatusCode] = MappingProxyType(
    {
        pb.SESSION_NOT_FOUND: _C.NOT_FOUND,
        pb.SESSION_EXPIRED: _C.NOT_FOUND,
        pb.SESSION_EVICTED: _C.NOT_FOUND,
        pb.SESSION_EXISTS: _C.ALREADY_EXISTS,
        pb.STEP_GAP: _C.FAILED_PRECONDITION,
        pb.STEP_LIMIT: _C.FAILED_PRECONDITION,
        pb.MODEL_NOT_FOUND: _C.NOT_FOUND,
        pb.INVALID_INPUT: _C.INVALID_ARGUMENT,
        pb.TOO_LARGE: _C.INVALID_ARGUMENT,
        pb.QUEUE_FULL: _C.RESOURCE_EXHAUSTED,
        pb.CAPACITY_FULL: _C.RESOURCE_EXHAUSTED,
        pb.DRAINING: _C.UNAVAILABLE,
        pb.DEADLINE: _C.DEADLINE_EXCEEDED,
        pb.CANCELLED_BY_CLIENT: _C.CANCELLED,
        pb.INTERNAL_ERROR: _C.INTERNAL,
        pb.UNAUTHENTICATED: _C.UNAUTHENTICATED,
        pb.TENANT_QUOTA: _C.RESOURCE_EXHAUSTED,
        pb.STORE_UNAVAILABLE: _C.UNAVAILABLE,
    }
)
"""The gRPC code of every ``ErrorReason`` (by enum value)."""

_missing = set(pb.ErrorReason.values()) - {pb.ERROR_REASON_UNSPECIFIED} - set(CODES)
if _missing or pb.ERROR_REASON_UNSPECIFIED in CODES:
    raise ImportError(
        "status.CODES must give a code to every ErrorReason but ERROR_REASON_UNSPECIFIED;"
        f" missing: {sorted(pb.ErrorReason.Name(v) for v in _missing)}"
    )

# Errors carry the reason's name: look codes up by name on the hot path.
_CODE_BY_NAME: dict[str, grpc.StatusCode] = {
    pb.ErrorReason.Name(value): code for value, code in CODES.items()
}


def status_code(error: SeqinferError) -> grpc.StatusCode:
    """The gRPC code ``error`` travels with."""
    return _CODE_BY_NAME[error.reason]


def to_status_proto(error: SeqinferError) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    code = _CODE_BY_NAME[error.reason].value[0]
    return status_pb2.Status(code=code, message=error.message, details=[detail])


def to_grpc_status(error: SeqinferError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(error))
