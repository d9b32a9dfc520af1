"""Session handles: :class:`Session` (sync) and :class:`AsyncSession` (asyncio).

Each is the public signature of a handle plus its I/O; what a step expects
and what a reply does to the counter is decided in
:mod:`seqinfer.client.handle`. See there for why every step carries
``expected_step`` and a ``request_id``.

A step whose outcome the client cannot know (its deadline passed, or the
connection broke, after the request may have reached the engine) is kept
by the handle: ``recover()`` sends the very same request again, which the
server answers with the cached reply (``replayed``) if the step applied, or
applies now if it never did. Either way it applies exactly once and the
counter is right.

One handle is meant to be driven by one caller at a time; each holds a lock
so that concurrent ``step`` calls queue up instead of racing on the counter.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

import numpy as np
import numpy.typing as npt

from seqinfer.client import calls
from seqinfer.client.datatypes import SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, SessionNotFound
from seqinfer.client.handle import (
    AsyncSessionOwner,
    SessionOwner,
    SessionState,
    needs_kind,
    outcome_unknown,
    outputs_of,
)
from seqinfer.client.messages import Inputs, OutputMode
from seqinfer.client.tensors import DTypeLike

__all__ = ["AsyncSession", "Session", "needs_kind", "outcome_unknown"]


class Session(SessionState):
    """A session on a server, driven through a sync :class:`Client`.

    Use as a context manager to close the session on exit.
    """

    def __init__(self, client: SessionOwner, info: SessionInfo) -> None:
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
        kind = None
        if needs_kind(inputs):
            kind = self._client.input_kind(self.model, self.model_version)
        with self._lock:
            req = self._request(
                inputs, kind, output_mode=output_mode, return_state=return_state,
                reset=reset, end=end, dtype=dtype,
            )  # fmt: skip
            try:
                out = self._client.send(calls.step(req), timeout=timeout)
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
                out = self._client.send(calls.step(req), timeout=timeout)
            except SeqinferError as error:
                self._recover_failed(req, error)
                raise
            self._recovered(out)
            return out

    def __call__(self, inputs: Inputs, **kwargs: object) -> np.ndarray:
        """Steps and returns only the outputs array (see :meth:`step`)."""
        return outputs_of(self.step(inputs, **kwargs))  # type: ignore[arg-type]

    def refresh(self, timeout: float | None = None) -> SessionInfo:
        """Re-reads the session from the server and resyncs the step counter."""
        info = self._client.send(calls.get_session(self.session_id), timeout=timeout)
        with self._lock:
            self._refreshed(info)
        return info

    def fork(self, new_id: str | None = None, *, idle_ttl: float | None = None) -> Session:
        """A copy of this session (state and counter) under a new id."""
        info = self._client.send(calls.fork_session(self.session_id, new_id, idle_ttl))
        return Session(self._client, info)

    def export_state(self) -> np.ndarray:
        """The hidden state ``[num_layers, hidden_size]``."""
        state, info = self._client.send(calls.export_state(self.session_id))
        with self._lock:
            self._refreshed(info)
        return state

    def import_state(
        self, state: npt.ArrayLike, *, step: int | None = None, dtype: DTypeLike = None
    ) -> SessionInfo:
        """Overwrites the hidden state (and the counter, if ``step`` is given)."""
        call = calls.import_state(
            self.session_id, state, create=False, model="", model_version="", step=step,
            dtype=dtype,
        )  # fmt: skip
        info = self._client.send(call)
        with self._lock:
            self._refreshed(info)
        return info

    def close(self) -> int:
        """Closes the session; returns its final step counter."""
        final = self._client.send(calls.close_session(self.session_id))
        self._closed(final)
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


class AsyncSession(SessionState):
    """A session on a server, driven through an :class:`AsyncClient`.

    Use as ``async with`` to close the session on exit.
    """

    def __init__(self, client: AsyncSessionOwner, info: SessionInfo) -> None:
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
            await self._client.input_kind(self.model, self.model_version)
            if needs_kind(inputs)
            else None
        )
        async with self._lock:
            req = self._request(
                inputs, kind, output_mode=output_mode, return_state=return_state,
                reset=reset, end=end, dtype=dtype,
            )  # fmt: skip
            try:
                out = await self._client.send(calls.step(req), timeout=timeout)
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
                out = await self._client.send(calls.step(req), timeout=timeout)
            except SeqinferError as error:
                self._recover_failed(req, error)
                raise
            self._recovered(out)
            return out

    async def __call__(self, inputs: Inputs, **kwargs: object) -> np.ndarray:
        """Steps and returns only the outputs array."""
        return outputs_of(await self.step(inputs, **kwargs))  # type: ignore[arg-type]

    async def refresh(self, timeout: float | None = None) -> SessionInfo:
        """Re-reads the session from the server and resyncs the step counter."""
        info = await self._client.send(calls.get_session(self.session_id), timeout=timeout)
        self._refreshed(info)
        return info

    async def fork(
        self, new_id: str | None = None, *, idle_ttl: float | None = None
    ) -> AsyncSession:
        """A copy of this session (state and counter) under a new id."""
        info = await self._client.send(calls.fork_session(self.session_id, new_id, idle_ttl))
        return AsyncSession(self._client, info)

    async def export_state(self) -> np.ndarray:
        """The hidden state ``[num_layers, hidden_size]``."""
        exported = await self._client.send(calls.export_state(self.session_id))
        state, info = exported
        self._refreshed(info)
        return state

    async def import_state(
        self, state: npt.ArrayLike, *, step: int | None = None, dtype: DTypeLike = None
    ) -> SessionInfo:
        """Overwrites the hidden state (and the counter, if ``step`` is given)."""
        call = calls.import_state(
            self.session_id, state, create=False, model="", model_version="", step=step,
            dtype=dtype,
        )  # fmt: skip
        info = await self._client.send(call)
        self._refreshed(info)
        return info

    async def close(self) -> int:
        """Closes the session; returns its final step counter."""
        final = await self._client.send(calls.close_session(self.session_id))
        self._closed(final)
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
