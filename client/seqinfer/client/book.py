"""The book of a pipelined stream: requests in flight and the counters they move.

A stream sends each step as soon as it is submitted and matches replies by
``request_id``. Steps of a handle are pipelined with ``expected_step`` =
the counter the handle *predicts* after the steps already in flight; when
the last of them settles the handle takes the server's counter again. This
bookkeeping has no I/O, so the sync and async streams share it as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seqinfer.client import messages
from seqinfer.client.datatypes import StepOutput
from seqinfer.client.errors import ReplyLost, SeqinferError, StepGap, from_status
from seqinfer.client.handle import SessionState
from seqinfer.client.messages import Inputs
from seqinfer.client.tensors import InputKind, timesteps
from seqinfer.v1 import seqinfer_pb2 as pb


@dataclass
class _Pending:
    request: pb.StepRequest
    session: SessionState | None
    future: Any  # concurrent.futures.Future or asyncio.Future
    resent: bool = False


Settlement = tuple[Any, StepOutput | SeqinferError]


class Book:
    """Requests in flight, in send order, and the session counters they move.

    Pure bookkeeping with no I/O, so that the sync and async streams share it.
    Methods return the futures to settle instead of settling them, so that
    the sync stream can run user callbacks outside its lock.
    """

    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}  # insertion order = send order
        self._outstanding: dict[str, int] = {}

    def build(
        self,
        target: SessionState | str,
        inputs: Inputs,
        kind: InputKind | None,
        options: Mapping[str, Any],
    ) -> tuple[pb.StepRequest, SessionState | None]:
        """The request for one submitted step; advances a handle's predicted counter.

        ``options`` are a ``submit``'s StepCall options (see
        :func:`~seqinfer.client.messages.step_options`).
        """
        session = target if isinstance(target, SessionState) else None
        call = messages.StepCall(
            session.session_id if session is not None else str(target), inputs, **options
        )
        if session is not None and call.expected_step is None:
            call.expected_step = session.step_count
        req = call.to_proto(kind)
        if req.request_id in self.pending:
            raise ValueError(f"request_id {req.request_id!r} is already in flight")
        if session is not None:
            # Predict the counter after this step, so the next submitted step
            # can be pipelined with the right expected_step.
            t = timesteps(req.inputs)
            session.step_count = t if req.reset else req.expected_step + t
        return req, session

    def add(self, request: pb.StepRequest, session: SessionState | None, future: Any) -> None:
        """Records a request about to be sent."""
        self.pending[request.request_id] = _Pending(request, session, future)
        sid = request.session_id
        self._outstanding[sid] = self._outstanding.get(sid, 0) + 1

    def settle(self, result: pb.StepResult) -> Settlement | None:
        """The future and value for a reply; None for a reply to nothing we sent."""
        p = self.pending.pop(result.request_id, None)
        if p is None:
            return None
        value: StepOutput | SeqinferError
        if result.WhichOneof("outcome") == "response":
            value = StepOutput.from_proto(result.response)
        elif result.WhichOneof("outcome") == "error":
            value = _lost_or_error(p, from_status(result.error))
        else:
            value = SeqinferError("server sent a StepResult with neither response nor error")
        self._done(p, value)
        return p.future, value

    def fail(self, p: _Pending, error: SeqinferError) -> Settlement:
        """Gives up on one pending request."""
        self.pending.pop(p.request.request_id, None)
        self._done(p, error)
        return p.future, error

    def fail_all(self, error: SeqinferError) -> list[Settlement]:
        """Gives up on every pending request."""
        return [self.fail(p, error) for p in list(self.pending.values())]

    def split_for_resend(
        self, error: SeqinferError
    ) -> tuple[list[pb.StepRequest], list[Settlement]]:
        """After a broken stream: (requests safe to resend, in order; settlements of the rest)."""
        resend: list[pb.StepRequest] = []
        failed: list[Settlement] = []
        for p in list(self.pending.values()):
            if p.request.HasField("expected_step") and p.request.request_id:
                p.resent = True
                resend.append(p.request)
            else:
                failed.append(self.fail(p, error))
        return resend, failed

    def _done(self, p: _Pending, value: StepOutput | SeqinferError) -> None:
        sid = p.request.session_id
        left = self._outstanding.get(sid, 1) - 1
        if left:
            self._outstanding[sid] = left
        else:
            self._outstanding.pop(sid, None)
        session = p.session
        if session is None or left:
            # Later steps of this session are in flight; the handle's
            # predicted counter stays until the last of them settles.
            return
        if isinstance(value, StepOutput):
            session._applied(value)
        elif isinstance(value, StepGap | ReplyLost) and value.current_step is not None:
            session.step_count = value.current_step
        else:
            # A failed step applied nothing: back to the counter it expected.
            session.step_count = p.request.expected_step


def _lost_or_error(p: _Pending, error: SeqinferError) -> SeqinferError:
    """A resent step refused with a gap *past* it was applied before the break."""
    if not (p.resent and isinstance(error, StepGap)) or error.current_step is None:
        return error
    req = p.request
    if req.reset or error.current_step < req.expected_step + timesteps(req.inputs):
        return error
    return ReplyLost(
        f"step {req.request_id} was applied before the stream broke, but its reply was "
        f"lost (only a session's last reply is kept for replay); session {req.session_id} "
        f"is at step {error.current_step}",
        metadata=error.metadata,
    )


def apply(settlements: list[Settlement]) -> None:
    """Hands each value to its future; the caller runs this outside any lock (callbacks)."""
    for future, value in settlements:
        if future.done():  # cancelled by the caller
            continue
        if isinstance(value, SeqinferError):
            future.set_exception(value)
        else:
            future.set_result(value)
