"""Python client for seqinfer (needs grpcio, protobuf and numpy; never torch).

    from seqinfer.client import Client

    with Client("127.0.0.1:50051") as client, client.session("bench-gru") as s:
        out = s.step(x)          # x: [T, F] or [F] floats, or token ids
        print(out.outputs)

See docs/client.md for async use, streams, retries and errors.
"""

from seqinfer.client.aio import AsyncClient
from seqinfer.client.client import Client, StepItem, StepManyResult
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import (
    Cancelled,
    CapacityFull,
    DeadlineExceeded,
    Draining,
    InternalError,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    ReplyLost,
    ResourceExhausted,
    SeqinferError,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StepGap,
    StepLimit,
    StoreUnavailable,
    TenantQuota,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from seqinfer.client.messages import StepCall
from seqinfer.client.options import ChannelOptions
from seqinfer.client.retry import RetryPolicy
from seqinfer.client.session import AsyncSession, Session
from seqinfer.client.stream import AsyncStepStream, StepStream
from seqinfer.client.tensors import TensorError

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "AsyncStepStream",
    "Cancelled",
    "CapacityFull",
    "ChannelOptions",
    "Client",
    "DeadlineExceeded",
    "Draining",
    "ExportedState",
    "InternalError",
    "InvalidInput",
    "ModelInfo",
    "ModelNotFound",
    "QueueFull",
    "ReplyLost",
    "ResourceExhausted",
    "RetryPolicy",
    "SeqinferError",
    "Session",
    "SessionEvicted",
    "SessionExists",
    "SessionExpired",
    "SessionInfo",
    "SessionNotFound",
    "StepCall",
    "StepGap",
    "StepItem",
    "StepLimit",
    "StepManyResult",
    "StepOutput",
    "StepStream",
    "StoreUnavailable",
    "TenantQuota",
    "TensorError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
]
