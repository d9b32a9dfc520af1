"""How big a reply will be, known before the request is applied.

gRPC refuses to send a message over ``max_message_bytes``; a step whose
reply is refused has been applied all the same, and a retry fails the same
way. The reply's size follows from the model, T, the output mode and
``return_state``, so the api refuses such a request up front (TOO_LARGE,
nothing applied). The bounds here are upper bounds on the serialized size of
a ``StepResult`` (which holds everything a unary ``StepResponse`` holds, and
the ids once more); ``tests/unit/test_replies.py`` checks them against real
messages at the extremes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqinfer.service.bounds import utf8_size
from seqinfer.service.engine import OutputMode
from seqinfer.service.errors import ModelNotFound
from seqinfer.service.inputs import OUTPUT_MODES
from seqinfer.service.models.spec import InputKind, ModelSpec
from seqinfer.service.tenants import session_key

if TYPE_CHECKING:
    from seqinfer.service.config import Settings
    from seqinfer.service.protocol import StepBatch
    from seqinfer.service.router import Router
    from seqinfer.service.runtime import ModelRuntime

# Everything in a StepResult besides tensor data and ids: field tags, length
# varints, a uint64 counter, three flags, two tensors' dtype and shape, the
# result's entry in a StepManyResponse. Measured at most ~130 bytes.
RESULT_OVERHEAD = 192
# A SessionInfo besides its ids and names (timestamps, counter, TTL, tags),
# plus the ExportStateResponse's tensor header.
SESSION_INFO_OVERHEAD = 192


@dataclass(frozen=True, slots=True)
class ReplyShape:
    """One model's reply sizes per timestep of output and per state."""

    output_row: int  # bytes of one timestep's outputs
    state: int  # bytes of one session's hidden state


def reply_shape(spec: ModelSpec) -> ReplyShape:
    """Computed once per served model (the api keeps them by model key)."""
    # The engine hands out float32 for bfloat16 models (numpy has no bfloat16).
    dtype = torch.float32 if spec.torch_dtype is torch.bfloat16 else spec.torch_dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    return ReplyShape(spec.out_features * itemsize, spec.num_layers * spec.hidden_size * itemsize)


@dataclass(frozen=True, slots=True)
class MessageBound:
    """A bound on a StepMany reply from the request's size alone, for all served models.

    Each result holds at most the largest LAST row and state, its ids twice
    (at most twice the request's bytes), and per timestep of ALL outputs the
    largest row; and every timestep of inputs took at least
    ``min_timestep_bytes`` of the request. Far above the true size, but it
    costs one ``ByteSize()`` and clears the usual StepMany without looking
    at its steps one by one.
    """

    per_item: int
    per_timestep: int
    min_timestep_bytes: int

    @classmethod
    def of(cls, specs: Iterable[ModelSpec]) -> MessageBound:
        specs = list(specs)
        shapes = [reply_shape(spec) for spec in specs]
        return cls(
            RESULT_OVERHEAD + max(s.output_row for s in shapes) + max(s.state for s in shapes),
            max(s.output_row for s in shapes),
            # float16/bfloat16 features (2 bytes each) or an int32 token id.
            min(2 * s.input_size if s.input_kind is InputKind.DENSE else 4 for s in specs),
        )

    def reply_bytes(self, items: int, request_bytes: int) -> int:
        timesteps = request_bytes // self.min_timestep_bytes
        return items * self.per_item + 2 * request_bytes + timesteps * self.per_timestep


def result_bytes(
    shape: ReplyShape, timesteps: int, mode: OutputMode, return_state: bool, id_bytes: int
) -> int:
    """Upper bound of one step's StepResult (``id_bytes``: session id + request id)."""
    size = RESULT_OVERHEAD + 2 * id_bytes
    if mode is OutputMode.LAST:
        size += shape.output_row
    elif mode is OutputMode.ALL:
        size += timesteps * shape.output_row
    if return_state:
        size += shape.state
    return size


def export_bytes(spec: ModelSpec, session_id_bytes: int) -> int:
    """Upper bound of an ExportStateResponse for one session of this model."""
    names = len(spec.name.encode()) + len(spec.version.encode())
    itemsize = torch.empty((), dtype=spec.torch_dtype).element_size()
    state = spec.num_layers * spec.hidden_size * itemsize
    return SESSION_INFO_OVERHEAD + session_id_bytes + names + state


def batch_estimates(
    batch: StepBatch, router: Router, shapes: dict[str, ReplyShape], settings: Settings
) -> list[int]:
    """Upper bounds of each StepMany step's result, from the request alone (nothing queued).

    A step that will fail gets an error result, and a retry may get a cached
    reply larger than it asks for; ``results.ResultBuilder`` fits both into
    the room reserved here when it must.
    """
    runtimes = router.runtimes
    estimates = []
    for k in range(len(batch)):
        session_id, request_id = batch.session_ids[k], batch.request_ids[k]
        # Ids over their limits are refused, and their error result echoes them cut.
        id_bytes = min(utf8_size(session_id), settings.max_session_id_bytes) + min(
            utf8_size(request_id), settings.max_request_id_bytes
        )
        runtime: ModelRuntime | None = None
        key = session_key(batch.tenant, session_id)
        for candidate in runtimes:
            if key in candidate.table.by_id:
                runtime = candidate
                break
        if runtime is None and batch.starts[k]:
            try:
                runtime = router.model(batch.models[k], batch.model_versions[k], batch.tenant)
            except ModelNotFound:
                pass
        mode = OUTPUT_MODES.get(batch.output_modes[k])
        if runtime is None or mode is None:
            estimates.append(RESULT_OVERHEAD + 2 * id_bytes)
            continue
        shape = batch.shapes[k]
        timesteps = min(max(shape[0], 0), settings.max_timesteps) if shape else 0
        estimates.append(
            result_bytes(shapes[runtime.key], timesteps, mode, batch.return_states[k], id_bytes)
        )
    return estimates
