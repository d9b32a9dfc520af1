"""Plain result types handed to users instead of protobuf messages.

Enums become lower-case names ("dense", "logits", "float32"), timestamps
become aware ``datetime`` objects, tensors become numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from google.protobuf import timestamp_pb2

from seqinfer.client import tensors
from seqinfer.v1 import seqinfer_pb2 as pb


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """`INPUT_KIND_DENSE` -> "dense"; unknown values keep their number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _dtype_name(value: int) -> str:
    return _enum_name(pb.DType, value, "DTYPE_")


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


@dataclass(frozen=True)
class ModelInfo:
    """A served model (see ``ModelInfo`` in the proto for each field)."""

    name: str
    version: str
    input_kind: str  # "tokens" | "dense"
    input_size: int
    hidden_size: int
    num_layers: int
    output_kind: str  # "logits" | "probabilities" | "values" | "hidden"
    output_size: int
    dtype: str
    device: str
    description: str
    max_timesteps: int
    max_sessions: int
    open_sessions: int
    state_bytes_per_session: int

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        """Converts the wire message."""
        return cls(
            name=m.name,
            version=m.version,
            input_kind=_enum_name(pb.InputKind, m.input_kind, "INPUT_KIND_"),
            input_size=m.input_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            output_kind=_enum_name(pb.OutputKind, m.output_kind, "OUTPUT_KIND_"),
            output_size=m.output_size,
            dtype=_dtype_name(m.dtype),
            device=m.device,
            description=m.description,
            max_timesteps=m.max_timesteps,
            max_sessions=m.max_sessions,
            open_sessions=m.open_sessions,
            state_bytes_per_session=m.state_bytes_per_session,
        )


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server sees it. ``step`` counts timesteps applied."""

    session_id: str
    model: str
    model_version: str
    step: int
    created_at: datetime | None
    last_used_at: datetime | None
    tier: str  # "device" | "host" | "snapshot" | "unspecified"
    idle_ttl_seconds: float

    @classmethod
    def from_proto(cls, s: pb.SessionInfo) -> SessionInfo:
        """Converts the wire message."""
        return cls(
            session_id=s.session_id,
            model=s.model,
            model_version=s.model_version,
            step=s.step,
            created_at=_time(s.created_at, s.HasField("created_at")),
            last_used_at=_time(s.last_used_at, s.HasField("last_used_at")),
            tier=_enum_name(pb.StateTier, s.tier, "STATE_TIER_"),
            idle_ttl_seconds=s.idle_ttl_seconds,
        )


@dataclass(frozen=True)
class StepOutput:
    """The reply to one step.

    Attributes:
        outputs: ``[output_size]`` (mode "last"), ``[T, output_size]`` ("all"),
            or None ("none").
        state: ``[num_layers, hidden_size]`` when ``return_state`` was set.
        step: the session's step counter after this request.
        created: this request created the session (``start``).
        closed: this request closed the session (``end``).
        replayed: a cached reply to a retried request; nothing was applied twice.
    """

    session_id: str
    request_id: str
    outputs: np.ndarray | None
    state: np.ndarray | None
    step: int
    created: bool = False
    closed: bool = False
    replayed: bool = False

    @classmethod
    def from_proto(cls, r: pb.StepResponse) -> StepOutput:
        """Converts the wire message."""
        return cls(
            session_id=r.session_id,
            request_id=r.request_id,
            outputs=tensors.from_proto(r.outputs) if r.HasField("outputs") else None,
            state=tensors.from_proto(r.state) if r.HasField("state") else None,
            step=r.step,
            created=r.created,
            closed=r.closed,
            replayed=r.replayed,
        )


class ExportedState(NamedTuple):
    """A session's hidden state ``[num_layers, hidden_size]`` and its info.

    A tuple, so ``state, info = client.export_state(sid)`` works.
    """

    state: np.ndarray
    session: SessionInfo
