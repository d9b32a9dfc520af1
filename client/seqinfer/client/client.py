"""The synchronous client.

``Client`` turns each RPC into a method taking and returning plain Python and
numpy values, raises typed :mod:`seqinfer.client.errors` exceptions, and
retries what is safe to retry (see :mod:`seqinfer.client.retry`). What each
call sends and how its reply is read is in :mod:`seqinfer.client.calls`,
shared with :class:`~seqinfer.client.AsyncClient`; this module is the
public signatures plus the blocking loop that sends a call.

Which calls are retried, and why it is safe:

* reads (ListModels, GetModel, GetSession, ExportState): always;
* OpenSession / ForkSession: always; when the caller gives no id the client
  picks a random one, so that a retry after a lost reply finds "its" session
  (SESSION_EXISTS) and adopts it instead of leaking a second one;
* CloseSession, ImportState: always (a repeat has the same effect);
* Step / StepMany: only when every step carries ``expected_step`` and a
  ``request_id`` (``Session`` handles always do): the server then applies a
  step once and answers repeats from its cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from seqinfer.client import calls
from seqinfer.client.batch import StepManyPlan, StepManyResult
from seqinfer.client.calls import Call
from seqinfer.client.core import UNKNOWN, ClientCore
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, from_rpc_error
from seqinfer.client.messages import Inputs, OutputMode, StepCall, step_options
from seqinfer.client.options import ChannelOptions, make_channel
from seqinfer.client.retry import call_with_retry
from seqinfer.client.session import Session, needs_kind
from seqinfer.client.spread import wait_spread
from seqinfer.client.stream import DEFAULT_MAX_IN_FLIGHT, StepStream
from seqinfer.client.tensors import DTypeLike, InputKind

R = TypeVar("R")

StepItem = StepCall | tuple[Session, Inputs]

__all__ = ["Client", "StepItem", "StepManyResult"]


class Client(ClientCore[grpc.Channel]):
    """A connection to a seqinfer server; the arguments are :class:`ClientCore`'s.

    Thread-safe: share one client between threads.
    """

    def _open_channel(
        self, address: str, options: ChannelOptions, credentials: grpc.ChannelCredentials | None
    ) -> grpc.Channel:
        return make_channel(address, options, credentials)

    def _spread(self) -> None:
        """Before the first call over ``addresses``: wait until each address answers."""
        with self._spread_lock:  # the first caller probes; others wait for it, then go
            if self._spread_pending:
                assert self.addresses is not None
                wait_spread(self._channel, len(set(self.addresses)), self.ready_timeout)
                self._spread_pending = False

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Closes the channel (if this client made it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- models -------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server serves."""
        return self.send(calls.list_models(), timeout=timeout)

    def get_model(self, name: str, version: str = "", *, timeout: float | None = None) -> ModelInfo:
        """One model; ``version`` "" means the newest."""
        return self.send(calls.get_model(name, version), timeout=timeout)

    def input_kind(self, model: str, version: str = "") -> InputKind | None:
        """The model's input kind ("dense" or "tokens"), asked once per model; None if unknown.

        Handles use it to tell a 1-D array of features from one of token ids.
        """
        kind = self._kinds.get(model, version)
        if kind is not UNKNOWN:
            return kind
        try:
            info = self.get_model(model, version)
        except SeqinferError:
            return None  # let the server judge the inputs
        return self._kinds.put(model, version, info.input_kind)

    # -- sessions -------------------------------------------------------------

    def open_session(
        self,
        model: str,
        session_id: str | None = None,
        *,
        model_version: str = "",
        initial_state: npt.ArrayLike | None = None,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Opens a session and returns its handle.

        Args:
            model: model name.
            session_id: your id for it (1..128 bytes); None: a random one.
            model_version: "" means the newest.
            initial_state: ``[num_layers, hidden_size]``; None: zeros.
            idle_ttl: seconds idle before it expires; 0: never; None: the
                server's default.
        """
        call = calls.open_session(
            model, session_id, model_version=model_version, initial_state=initial_state,
            idle_ttl=idle_ttl,
        )  # fmt: skip
        return Session(self, self.send(call, timeout=timeout))

    @contextmanager
    def session(
        self,
        model: str,
        session_id: str | None = None,
        *,
        model_version: str = "",
        initial_state: npt.ArrayLike | None = None,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[Session]:
        """``with client.session("m") as s:`` opens a session and closes it on exit."""
        call = calls.open_session(
            model, session_id, model_version=model_version, initial_state=initial_state,
            idle_ttl=idle_ttl,
        )  # fmt: skip
        with Session(self, self.send(call, timeout=timeout)) as sess:
            yield sess

    def attach(self, session_id: str, *, timeout: float | None = None) -> Session:
        """A handle for an existing session (its counter read from the server)."""
        return Session(self, self.get_session(session_id, timeout=timeout))

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """A session's info, including its step counter."""
        return self.send(calls.get_session(session_id), timeout=timeout)

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Closes a session; returns the step counter it had."""
        return self.send(calls.close_session(session_id), timeout=timeout)

    def fork_session(
        self,
        session_id: str,
        new_id: str | None = None,
        *,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Copies a session's state and counter into a new session; returns its handle."""
        info = self.send(calls.fork_session(session_id, new_id, idle_ttl), timeout=timeout)
        return Session(self, info)

    def export_state(self, session_id: str, *, timeout: float | None = None) -> ExportedState:
        """``(state, info)``: the hidden state ``[num_layers, hidden_size]`` and the session."""
        return self.send(calls.export_state(session_id), timeout=timeout)

    def import_state(
        self,
        session_id: str,
        state: npt.ArrayLike,
        *,
        create: bool = False,
        model: str = "",
        model_version: str = "",
        step: int | None = None,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> SessionInfo:
        """Overwrites a session's hidden state.

        With ``create``, opens the session on ``model`` if it does not exist.
        ``step`` sets its counter (pass the exported one when migrating, so
        ``expected_step`` keeps working). ``dtype`` defaults to the array's.
        """
        call = calls.import_state(
            session_id, state, create=create, model=model, model_version=model_version,
            step=step, dtype=dtype,
        )  # fmt: skip
        return self.send(call, timeout=timeout)

    # -- stepping ----------------------------------------------------------

    def step(
        self,
        session_id: str,
        inputs: Inputs,
        *,
        expected_step: int | None = None,
        request_id: str | None = None,
        start: bool = False,
        model: str = "",
        model_version: str = "",
        reset: bool = False,
        end: bool = False,
        output_mode: OutputMode = "last",
        return_state: bool = False,
        idle_ttl: float | None = None,
        dtype: DTypeLike = None,
        timeout: float | None = None,
    ) -> StepOutput:
        """One step of a session by id (a :class:`Session` handle is easier).

        Retried on UNAVAILABLE only when ``expected_step`` is given, since
        only then can the server tell a repeat from a new step.
        ``start`` with ``model`` creates the session if it does not exist.
        """
        step = StepCall(session_id, inputs, **step_options(locals()))
        kind = self.input_kind(model, model_version) if model and needs_kind(inputs) else None
        return self.send(calls.step(step.to_proto(kind)), timeout=timeout)

    def step_many(
        self, items: Sequence[StepItem], *, timeout: float | None = None
    ) -> list[StepManyResult]:
        """Steps of many sessions in one message.

        Each item is ``(session_handle, inputs)`` or a :class:`StepCall`. A
        session may appear more than once; its items apply in item order.
        Returns, in item order, a :class:`StepOutput` or the
        :class:`SeqinferError` of that item (not raised, so one bad item does
        not hide the others). Raises only if the whole call failed. Handles'
        counters advance with their results.
        """
        plan = StepManyPlan(items)
        kinds = {key: self.input_kind(*key) for key in plan.kinds_needed()}
        return self.send(plan.call(kinds), timeout=timeout)

    def stream(
        self, *, timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> StepStream:
        """A pipelined stream for steps of many sessions (see :class:`StepStream`).

        ``timeout`` bounds the whole stream's life (None: unbounded, not the
        client default, since a stream usually outlives one call).
        """
        return StepStream(
            self,
            self._stub.StreamSteps,
            self._metadata,
            self.retry_policy,
            timeout=timeout,
            max_in_flight=max_in_flight,
            ready=self._spread if self._spread_pending else None,
        )

    # -- I/O -------------------------------------------------------------------

    def send(self, call: Call[R], *, timeout: float | None = None) -> R:
        """Sends one prepared call, with retries, and returns its decoded reply.

        The public methods build their call and come here; session handles
        use it too (see :class:`~seqinfer.client.handle.SessionOwner`).
        """
        if self._spread_pending:
            self._spread()
        method = getattr(self._stub, call.method)
        metadata = self._call_metadata(call.session_id)

        def attempt(n: int, attempt_timeout: float | None) -> Any:
            try:
                return method(call.request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                stand_in = call.adoption(n, error)
                if stand_in is None:
                    raise error from exc
                return self.send(stand_in, timeout=timeout)

        reply = call_with_retry(
            attempt, self.retry_policy, self._deadline(timeout), idempotent=call.idempotent
        )
        return call.decode(reply)
