"""What a session handle knows and decides, and the little it needs from a client.

A handle is a session id plus the step counter the client tracks. Every
step it sends carries ``expected_step`` (the counter before the step) and a
fresh ``request_id``; that pair lets a step be retried after a lost reply
without being applied twice, and makes an out-of-order step fail with
``StepGap`` instead of silently corrupting the state.

The counter rules (adopt the server's counter on a gap, keep a step whose
outcome is unknown for ``recover()``) are plain code here, shared by the
sync and async handles. The handles reach their client only through
:class:`SessionOwner` / :class:`AsyncSessionOwner`: two methods, so a
handle can be driven by anything that can send a :class:`Call`, not only
by the concrete clients, and the clients' internals stay theirs.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, TypeVar

import grpc
import numpy as np

from seqinfer.client import messages
from seqinfer.client.calls import Call
from seqinfer.client.datatypes import SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, StepGap
from seqinfer.client.messages import Inputs, OutputMode
from seqinfer.client.tensors import DTypeLike, InputKind
from seqinfer.v1 import seqinfer_pb2 as pb

R = TypeVar("R")

# Failures made by gRPC itself (no ErrorInfo reason) after which a sent step
# may or may not have been applied. Every seqinfer reason says it was not.
_UNKNOWN_OUTCOME = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def outcome_unknown(error: SeqinferError) -> bool:
    """Whether a step that failed with ``error`` may nevertheless have been applied."""
    return not error.reason and error.code in _UNKNOWN_OUTCOME


def needs_kind(inputs: Inputs) -> bool:
    """Whether the array's shape alone leaves dense vs tokens ambiguous.

    ``[T, F]`` is always dense, and an encoded Tensor is taken as is; a 1-D
    or 0-D array could be one dense vector or token ids.
    """
    return not isinstance(inputs, pb.Tensor) and np.ndim(inputs) < 2


class SessionOwner(Protocol):
    """What a sync handle (and a sync stream) needs from its client."""

    def input_kind(self, model: str, version: str = "") -> InputKind | None: ...

    def send(self, call: Call[R], *, timeout: float | None = None) -> R: ...


class AsyncSessionOwner(Protocol):
    """What an async handle (and an async stream) needs from its client."""

    def input_kind(self, model: str, version: str = "") -> Awaitable[InputKind | None]: ...

    def send(self, call: Call[R], *, timeout: float | None = None) -> Awaitable[R]: ...


class SessionState:
    """The counter bookkeeping shared by the sync and async handles (no I/O)."""

    def __init__(self, info: SessionInfo) -> None:
        self.session_id = info.session_id
        self.model = info.model
        self.model_version = info.model_version
        #: Timesteps applied so far, as far as this handle knows; the
        #: ``expected_step`` of the next step.
        self.step_count = info.step
        #: The last SessionInfo the server sent for this session.
        self.info = info
        #: Set once this handle closed the session (close() or a step with end).
        self.closed = False
        # The last step, while its outcome is unknown (see ``recover``).
        self._unsettled: pb.StepRequest | None = None

    @property
    def unsettled(self) -> bool:
        """Whether the last step failed without telling whether it applied.

        ``recover()`` settles it; the next ``step()`` forgets it (its
        ``expected_step`` still keeps the order: it fails with ``StepGap``,
        adopting the server's counter, if the unsettled step had applied).
        """
        return self._unsettled is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(session_id={self.session_id!r}, model={self.model!r}, "
            f"step_count={self.step_count})"
        )

    def _request(
        self,
        inputs: Inputs,
        kind: InputKind | None,
        *,
        output_mode: OutputMode,
        return_state: bool,
        reset: bool,
        end: bool,
        dtype: DTypeLike,
    ) -> pb.StepRequest:
        """The next step's request; forgets an unsettled step (see :attr:`unsettled`)."""
        self._unsettled = None
        return messages.StepCall(
            session_id=self.session_id,
            inputs=inputs,
            expected_step=self.step_count,
            output_mode=output_mode,
            return_state=return_state,
            reset=reset,
            end=end,
            dtype=dtype,
        ).to_proto(kind)

    def _failed(self, req: pb.StepRequest, error: SeqinferError) -> None:
        if isinstance(error, StepGap):
            self._gap(error)
        elif outcome_unknown(error):
            self._unsettled = req

    def _take_unsettled(self) -> pb.StepRequest:
        if self._unsettled is None:
            raise RuntimeError("no step of this handle has an unknown outcome")
        return self._unsettled

    def _recover_failed(self, req: pb.StepRequest, error: SeqinferError) -> None:
        # Still unknown: keep it for another recover(); known: it is settled.
        if not outcome_unknown(error):
            self._unsettled = None
        self._failed(req, error)

    def _recovered(self, out: StepOutput) -> None:
        self._unsettled = None
        self._applied(out)

    def _applied(self, out: StepOutput) -> None:
        self.step_count = out.step
        if out.closed:
            self.closed = True

    def _gap(self, gap: StepGap) -> None:
        # The failed step applied nothing. Adopt the server's counter so the
        # caller, who has seen the exception, can carry on without refresh().
        if gap.current_step is not None:
            self.step_count = gap.current_step

    def _refreshed(self, info: SessionInfo) -> None:
        self.info = info
        self.step_count = info.step

    def _closed(self, final: int) -> None:
        self.closed = True
        self.step_count = final


def outputs_of(out: StepOutput) -> np.ndarray:
    """A step's outputs array, for ``handle(x)``; raises when it returned none."""
    if out.outputs is None:
        raise ValueError("this step returned no outputs (output_mode='none')")
    return out.outputs
