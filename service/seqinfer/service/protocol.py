"""The seam between the gRPC side and the engine side: plain-data commands and replies.

The gRPC side turns each request into one of these and each reply back into
protobuf; the engine side (``engine_client``, sessions, slab, scheduler,
compute) never sees protobuf or grpc. Every field is plain data: str, int,
float, bool, bytes, None, lists of them, numpy arrays (raw-byte columns),
other messages of this module, or a ``SeqinferError`` (whose whole state is
its reason name, message and string metadata; errors.rebuild makes one from
those). No futures, no callbacks, no references into the engine: the
in-process client passes these objects by reference, and a client in
another process can carry the same messages unchanged
(``tests/unit/test_protocol.py`` checks both properties).

A tensor travels as the contract sends it (``TensorData``: the proto's
DType code, shape, raw little-endian bytes), so decoding and checking it
against the model happen on the engine side, which knows the model a
session belongs to. StepMany travels as one ``StepBatch`` of columns, not
as a list of per-step objects: what one message carries is one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqinfer.service.errors import SeqinferError


@dataclass(slots=True)
class TensorData:
    dtype: int  # seqinfer.v1.DType value
    # A sequence of ints: in process, the request's repeated field itself, not
    # a copy (a hostile shape may have a million dims, which the checks
    # refuse after reading two); across processes, a list.
    shape: Sequence[int]
    data: bytes


@dataclass(slots=True)
class StepCommand:
    """One step request (Step, or one StreamSteps message)."""

    session_id: str
    request_id: str
    inputs: TensorData
    model: str = ""
    model_version: str = ""
    start: bool = False
    idle_ttl: float | None = None
    expected_step: int | None = None
    reset: bool = False
    end: bool = False
    output_mode: int = 0  # seqinfer.v1.OutputMode value (0: unspecified = LAST)
    return_state: bool = False
    deadline: float | None = None  # time.monotonic() of this host
    tenant: str = ""  # whose session: from the call's token ("" without tokens)


@dataclass(slots=True)
class StepBatch:
    """Many sessions' steps (one StepMany message), column by column.

    Column ``k`` of every list belongs to step ``k``; ``None`` in
    ``idle_ttls``/``expected_steps`` means the field was not set.
    """

    session_ids: list[str]
    request_ids: list[str]
    models: list[str]
    model_versions: list[str]
    starts: list[bool]
    idle_ttls: list[float | None]
    expected_steps: list[int | None]
    resets: list[bool]
    ends: list[bool]
    output_modes: list[int]
    return_states: list[bool]
    dtypes: list[int]
    shapes: list[Sequence[int]]
    data: list[bytes]
    deadline: float | None = None
    wire_bytes: int = 0
    tenant: str = ""

    def __len__(self) -> int:
        return len(self.session_ids)


@dataclass(slots=True)
class StepOutcome:
    """What an applied (or replayed) step produced."""

    session_id: str
    request_id: str
    step: int
    outputs: np.ndarray | None = None
    state: np.ndarray | None = None
    created: bool = False
    closed: bool = False
    replayed: bool = False

    def copy(self, *, replayed: bool) -> StepOutcome:
        """Its own outputs (not a view that would keep a whole batch's array alive)."""
        return StepOutcome(
            self.session_id,
            self.request_id,
            self.step,
            None if self.outputs is None else self.outputs.copy(),
            self.state,
            self.created,
            self.closed,
            replayed,
        )


# A step's reply: its outcome, or why it was not applied.
StepReply = StepOutcome | SeqinferError


@dataclass(slots=True)
class StepBatchReply:
    """One reply per step of a ``StepBatch``, in its order."""

    replies: list[StepReply]


@dataclass(slots=True)
class OpenCommand:
    model: str
    model_version: str = ""
    session_id: str = ""  # empty: the engine issues a UUID
    idle_ttl: float | None = None
    initial_state: TensorData | None = None
    tenant: str = ""


@dataclass(slots=True)
class ForkCommand:
    session_id: str
    new_session_id: str = ""
    idle_ttl: float | None = None
    tenant: str = ""


@dataclass(slots=True)
class ImportCommand:
    session_id: str
    state: TensorData | None
    step: int | None = None
    create: bool = False
    model: str = ""
    model_version: str = ""
    tenant: str = ""


@dataclass(slots=True)
class SessionInfo:
    session_id: str
    model: str
    model_version: str
    step: int
    created_at: float  # wall clock seconds
    last_used_at: float  # wall clock seconds
    idle_ttl: float
    tier: str = "device"


@dataclass(slots=True)
class ExportReply:
    session: SessionInfo
    state: TensorData  # [layers, hidden] in the model's dtype, exactly as in the slab


@dataclass(slots=True)
class ModelInfo:
    name: str
    version: str
    input_kind: str  # models.spec.InputKind value
    input_size: int
    hidden_size: int
    num_layers: int
    output_kind: str  # models.spec.OutputKind value
    output_size: int
    dtype: int  # seqinfer.v1.DType value
    device: str
    description: str
    max_timesteps: int
    max_sessions: int
    open_sessions: int
    state_bytes_per_session: int
