"""Session handles: a session id plus the step counter the client tracks.

Every step a handle sends carries ``expected_step`` (the counter before the
step) and a fresh ``request_id``. That pair is what lets the client retry a
step after a lost reply without applying it twice, and it makes a step that
would land out of order fail with ``StepGap`` instead of silently corrupting
the state.

A step whose outcome the client cannot know (its deadline passed, or the
connection broke, after the request may have reached the engine) is kept
by the handle: ``recover()`` sends the very same request again, which the
server answers with the cached reply (``replayed``) if the step applied, or
applies now if it never did. Either way it applies exactly once and the
counter is right.

One handle is meant to be driven by one caller at a time; ``Session`` holds
a lock so that concurrent ``step`` calls from threads queue up instead of
racing on the counter.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt

from seqinfer.client import messages
from seqinfer.client.datatypes import SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, SessionNotFound, StepGap
from seqinfer.client.messages import Inputs, OutputMode
from seqinfer.client.tensors import DTypeLike, InputKind
from seqinfer.v1 import seqinfer_pb2 as pb

if TYPE_CHECKING:
    from seqinfer.client.aio import AsyncClient
    from seqinfer.client.client import Client


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


class _SessionBase:
    """State shared by the sync and async handles."""

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


class Session(_SessionBase):
    """A session on a server, driven through a sync :class:`Client`.

    Use as a context manager to close the session on exit.
    """

    def __init__(self, client: Client, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client
        self._lock = threading.Lock()

    def step(
        self,
        inputs: Inputs,
        *,
        output_mode: OutputMode = "last",
        return_state: bool = False,
        reset: bool = False,
        end: bool = False,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> StepOutput:
        """Applies one or more timesteps and returns the reply.

        Args:
            inputs: dense ``[T, F]`` or ``[F]`` floats, or token ids ``[T]``
                or one id.
            output_mode: "last" (outputs ``[output_size]``), "all"
                (``[T, output_size]``) or "none".
            return_state: also return the new hidden state.
            reset: zero the state (and counter) before stepping.
            end: close the session after stepping.
            dtype: wire dtype of the inputs (default float32 / int64).
            timeout: deadline of this step, retries included.
        """
        kind = (
            self._client._input_kind(self.model, self.model_version) if needs_kind(inputs) else None
        )
        with self._lock:
            req = self._request(
                inputs, kind, output_mode=output_mode, return_state=return_state,
                reset=reset, end=end, dtype=dtype,
            )  # fmt: skip
            self._unsettled = None
            try:
                out = self._client._step_proto(req, timeout)
            except SeqinferError as error:
                self._failed(req, error)
                raise
            self._applied(out)
            return out

    def recover(self, timeout: float | None = None) -> StepOutput:
        """Settles the last step whose outcome was unknown and returns its reply.

        Sends the same request (same ``request_id`` and ``expected_step``):
        ``replayed`` is true when the step had applied and this is its cached
        reply, false when it had not and applied now. Raises ``RuntimeError``
        if no step is unsettled (see :attr:`unsettled`), and ``StepGap`` if
        the session moved on meanwhile (another writer), adopting its counter.
        """
        with self._lock:
            req = self._take_unsettled()
            try:
                out = self._client._step_proto(req, timeout)
            except SeqinferError as error:
                if not outcome_unknown(error):
                    self._unsettled = None
                self._failed(req, error)
                raise
            self._unsettled = None
            self._applied(out)
            return out

    def __call__(self, inputs: Inputs, **kwargs: object) -> np.ndarray:
        """Steps and returns only the outputs array (see :meth:`step`)."""
        out = self.step(inputs, **kwargs)  # type: ignore[arg-type]
        if out.outputs is None:
            raise ValueError("this step returned no outputs (output_mode='none')")
        return out.outputs

    def refresh(self, timeout: float | None = None) -> SessionInfo:
        """Re-reads the session from the server and resyncs the step counter."""
        info = self._client.get_session(self.session_id, timeout=timeout)
        with self._lock:
            self._refreshed(info)
        return info

    def fork(self, new_id: str | None = None, *, idle_ttl: float | None = None) -> Session:
        """A copy of this session (state and counter) under a new id."""
        return self._client.fork_session(self.session_id, new_id, idle_ttl=idle_ttl)

    def export_state(self) -> np.ndarray:
        """The hidden state ``[num_layers, hidden_size]``."""
        state, info = self._client.export_state(self.session_id)
        with self._lock:
            self._refreshed(info)
        return state

    def import_state(
        self, state: npt.ArrayLike, *, step: int | None = None, dtype: DTypeLike = None
    ) -> SessionInfo:
        """Overwrites the hidden state (and the counter, if ``step`` is given)."""
        info = self._client.import_state(self.session_id, state, step=step, dtype=dtype)
        with self._lock:
            self._refreshed(info)
        return info

    def close(self) -> int:
        """Closes the session; returns its final step counter."""
        final = self._client.close_session(self.session_id)
        self.closed = True
        self.step_count = final
        return final

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        try:
            self.close()
        except SessionNotFound:
            # Already gone (expired, evicted, closed elsewhere): the goal of
            # closing it is met, and raising here would mask the block's result.
            self.closed = True


class AsyncSession(_SessionBase):
    """A session on a server, driven through an :class:`AsyncClient`.

    Use as ``async with`` to close the session on exit.
    """

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client
        self._lock = asyncio.Lock()

    async def step(
        self,
        inputs: Inputs,
        *,
        output_mode: OutputMode = "last",
        return_state: bool = False,
        reset: bool = False,
        end: bool = False,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> StepOutput:
        """Applies one or more timesteps; see :meth:`Session.step`."""
        kind = (
            await self._client._input_kind(self.model, self.model_version)
            if needs_kind(inputs)
            else None
        )
        async with self._lock:
            req = self._request(
                inputs, kind, output_mode=output_mode, return_state=return_state,
                reset=reset, end=end, dtype=dtype,
            )  # fmt: skip
            self._unsettled = None
            try:
                out = await self._client._step_proto(req, timeout)
            except SeqinferError as error:
                self._failed(req, error)
                raise
            self._applied(out)
            return out

    async def recover(self, timeout: float | None = None) -> StepOutput:
        """Settles the last step whose outcome was unknown; see :meth:`Session.recover`."""
        async with self._lock:
            req = self._take_unsettled()
            try:
                out = await self._client._step_proto(req, timeout)
            except SeqinferError as error:
                if not outcome_unknown(error):
                    self._unsettled = None
                self._failed(req, error)
                raise
            self._unsettled = None
            self._applied(out)
            return out

    async def __call__(self, inputs: Inputs, **kwargs: object) -> np.ndarray:
        """Steps and returns only the outputs array."""
        out = await self.step(inputs, **kwargs)  # type: ignore[arg-type]
        if out.outputs is None:
            raise ValueError("this step returned no outputs (output_mode='none')")
        return out.outputs

    async def refresh(self, timeout: float | None = None) -> SessionInfo:
        """Re-reads the session from the server and resyncs the step counter."""
        info = await self._client.get_session(self.session_id, timeout=timeout)
        self._refreshed(info)
        return info

    async def fork(
        self, new_id: str | None = None, *, idle_ttl: float | None = None
    ) -> AsyncSession:
        """A copy of this session (state and counter) under a new id."""
        return await self._client.fork_session(self.session_id, new_id, idle_ttl=idle_ttl)

    async def export_state(self) -> np.ndarray:
        """The hidden state ``[num_layers, hidden_size]``."""
        state, info = await self._client.export_state(self.session_id)
        self._refreshed(info)
        return state

    async def import_state(
        self, state: npt.ArrayLike, *, step: int | None = None, dtype: DTypeLike = None
    ) -> SessionInfo:
        """Overwrites the hidden state (and the counter, if ``step`` is given)."""
        info = await self._client.import_state(self.session_id, state, step=step, dtype=dtype)
        self._refreshed(info)
        return info

    async def close(self) -> int:
        """Closes the session; returns its final step counter."""
        final = await self._client.close_session(self.session_id)
        self.closed = True
        self.step_count = final
        return final

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        try:
            await self.close()
        except SessionNotFound:
            self.closed = True
