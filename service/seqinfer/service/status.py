"""The one place where domain errors become gRPC statuses with an ErrorInfo detail."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from seqinfer.service.errors import SeqinferError

DOMAIN = "seqinfer.v1"


def to_status_proto(error: SeqinferError) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])


def to_grpc_status(error: SeqinferError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(error))


def internal(exc: BaseException) -> SeqinferError:
    """A server fault, reported without leaking internals beyond the exception type."""
    return SeqinferError(f"internal error ({type(exc).__name__}); see server log")
