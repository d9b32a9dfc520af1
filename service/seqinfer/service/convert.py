"""Every protobuf ⇄ seam conversion (gRPC side): requests to commands, replies to messages.

Conversions copy fields and nothing else: no lookups, no checks against a
model (the engine side does those, on plain data), so that what a front end
does per request stays small and the same wherever the engine runs. The
hot ones read each field once; a StepMany is read column by column into one
``StepBatch``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from seqinfer.service.models.spec import InputKind, OutputKind
from seqinfer.service.protocol import (
    ExportReply,
    ForkCommand,
    ImportCommand,
    ModelInfo,
    OpenCommand,
    SessionInfo,
    StepBatch,
    StepCommand,
    TensorData,
)
from seqinfer.v1 import seqinfer_pb2 as pb

_INPUT_KINDS = {InputKind.TOKENS: pb.INPUT_KIND_TOKENS, InputKind.DENSE: pb.INPUT_KIND_DENSE}
_OUTPUT_KINDS = {
    OutputKind.LOGITS: pb.OUTPUT_KIND_LOGITS,
    OutputKind.PROBABILITIES: pb.OUTPUT_KIND_PROBABILITIES,
    OutputKind.VALUES: pb.OUTPUT_KIND_VALUES,
    OutputKind.HIDDEN: pb.OUTPUT_KIND_HIDDEN,
}
_TIERS = {"device": pb.STATE_TIER_DEVICE}


# ------------------------------------------------------------ requests --


def tensor_from_pb(tensor: pb.Tensor) -> TensorData:
    return TensorData(tensor.dtype, tensor.shape, tensor.data)


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def open_from_pb(request: pb.OpenSessionRequest, tenant: str) -> OpenCommand:
    return OpenCommand(
        request.model,
        request.model_version,
        request.session_id,
        _optional(request, "idle_ttl_seconds"),
        tensor_from_pb(request.initial_state) if request.HasField("initial_state") else None,
        tenant,
    )


def fork_from_pb(request: pb.ForkSessionRequest, tenant: str) -> ForkCommand:
    return ForkCommand(
        request.session_id, request.new_session_id, _optional(request, "idle_ttl_seconds"), tenant
    )


def import_from_pb(request: pb.ImportStateRequest, tenant: str) -> ImportCommand:
    return ImportCommand(
        request.session_id,
        tensor_from_pb(request.state) if request.HasField("state") else None,
        _optional(request, "step"),
        request.create,
        request.model,
        request.model_version,
        tenant,
    )


def step_from_pb(request: pb.StepRequest, deadline: float | None, tenant: str) -> StepCommand:
    """One step request (the hot path of Step and StreamSteps)."""
    tensor = request.inputs
    return StepCommand(
        request.session_id,
        request.request_id,
        TensorData(tensor.dtype, tensor.shape, tensor.data),  # type: ignore[arg-type]
        request.model,
        request.model_version,
        request.start,
        request.idle_ttl_seconds if request.HasField("idle_ttl_seconds") else None,
        request.expected_step if request.HasField("expected_step") else None,
        request.reset,
        request.end,
        request.output_mode,
        request.return_state,
        deadline,
        tenant,
    )


def batch_from_pb(request: pb.StepManyRequest, deadline: float | None, tenant: str) -> StepBatch:
    """A StepMany as columns: one pass per field, no object per step."""
    steps = request.steps
    tensors = [s.inputs for s in steps]
    return StepBatch(
        [s.session_id for s in steps],
        [s.request_id for s in steps],
        [s.model for s in steps],
        [s.model_version for s in steps],
        [s.start for s in steps],
        [s.idle_ttl_seconds if s.HasField("idle_ttl_seconds") else None for s in steps],
        [s.expected_step if s.HasField("expected_step") else None for s in steps],
        [s.reset for s in steps],
        [s.end for s in steps],
        [s.output_mode for s in steps],
        [s.return_state for s in steps],
        [t.dtype for t in tensors],
        [t.shape for t in tensors],  # type: ignore[misc]
        [t.data for t in tensors],
        deadline,
        request.ByteSize(),
        tenant,
    )


# ------------------------------------------------------------- replies --


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def model_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        input_kind=_INPUT_KINDS[InputKind(info.input_kind)],
        input_size=info.input_size,
        hidden_size=info.hidden_size,
        num_layers=info.num_layers,
        output_kind=_OUTPUT_KINDS[OutputKind(info.output_kind)],
        output_size=info.output_size,
        dtype=info.dtype,  # type: ignore[arg-type]
        device=info.device,
        description=info.description,
        max_timesteps=info.max_timesteps,
        max_sessions=info.max_sessions,
        open_sessions=info.open_sessions,
        state_bytes_per_session=info.state_bytes_per_session,
    )


def session_to_pb(info: SessionInfo) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=info.session_id,
        model=info.model,
        model_version=info.model_version,
        step=info.step,
        created_at=_timestamp(info.created_at),
        last_used_at=_timestamp(info.last_used_at),
        tier=_TIERS[info.tier],
        idle_ttl_seconds=info.idle_ttl,
    )


def tensor_to_pb(tensor: TensorData) -> pb.Tensor:
    return pb.Tensor(dtype=tensor.dtype, shape=tensor.shape, data=tensor.data)  # type: ignore[arg-type]


def export_to_pb(reply: ExportReply) -> pb.ExportStateResponse:
    return pb.ExportStateResponse(
        session=session_to_pb(reply.session), state=tensor_to_pb(reply.state)
    )
