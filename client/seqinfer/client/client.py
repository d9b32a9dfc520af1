"""The synchronous client.

``Client`` turns each RPC into a method taking and returning plain Python and
numpy values, raises typed :mod:`seqinfer.client.errors` exceptions, and
retries what is safe to retry (see :mod:`seqinfer.client.retry`).

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

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from seqinfer.client import messages, tensors
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import (
    SeqinferError,
    SessionExists,
    StepGap,
    from_rpc_error,
    from_status,
)
from seqinfer.client.messages import Inputs, OutputMode, StepCall
from seqinfer.client.options import (
    DEFAULT_ADDRESS,
    ChannelOptions,
    Metadata,
    call_metadata,
    make_channel,
)
from seqinfer.client.retry import RetryPolicy, call_with_retry
from seqinfer.client.session import Session, needs_kind
from seqinfer.client.stream import DEFAULT_MAX_IN_FLIGHT, StepStream
from seqinfer.client.tensors import DTypeLike, InputKind, timesteps
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

R = TypeVar("R")

StepItem = StepCall | tuple[Session, Inputs]
StepManyResult = StepOutput | SeqinferError


class Client:
    """A connection to a seqinfer server.

    Args:
        address: ``host:port`` of the server.
        timeout: default deadline in seconds of each call, retries included;
            None: no deadline. Each method also takes ``timeout``.
        retry: when and how to retry (``RetryPolicy.disabled()`` for never).
        channel_credentials: credentials for a TLS channel; None: plaintext.
        metadata: ``(key, value)`` pairs sent with every call.
        options: channel settings (message size, keepalive, routing header).
        channel: an existing channel to use instead of making one (it is not
            closed by :meth:`close`).

    Thread-safe: share one client between threads.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: ChannelOptions | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self._options = options if options is not None else ChannelOptions()
        self._metadata: Metadata = tuple((str(k), str(v)) for k, v in metadata)
        self._owns_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else make_channel(address, self._options, channel_credentials)
        )
        self._stub = pb_grpc.SeqinferStub(self._channel)
        self._kinds: dict[tuple[str, str], InputKind | None] = {}
        self._kinds_lock = threading.Lock()

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
        resp = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in resp.models]

    def get_model(self, name: str, version: str = "", *, timeout: float | None = None) -> ModelInfo:
        """One model; ``version`` "" means the newest."""
        req = pb.GetModelRequest(name=name, version=version)
        return ModelInfo.from_proto(self._unary(self._stub.GetModel, req, timeout))

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
        chosen = session_id or messages.new_request_id()
        req = messages.open_request(
            model,
            model_version=model_version,
            session_id=chosen,
            initial_state=initial_state,
            idle_ttl=idle_ttl,
        )

        def adopt(attempt: int, error: SeqinferError) -> pb.SessionInfo | None:
            # Our own random id exists after a retry: the lost first attempt
            # created it. (A caller-chosen id may belong to someone else.)
            if attempt > 1 and session_id is None and isinstance(error, SessionExists):
                return self._get_session_proto(chosen, timeout)
            return None

        info = self._unary(self._stub.OpenSession, req, timeout, chosen, recover=adopt)
        return Session(self, SessionInfo.from_proto(info))

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
        sess = self.open_session(
            model,
            session_id,
            model_version=model_version,
            initial_state=initial_state,
            idle_ttl=idle_ttl,
            timeout=timeout,
        )
        with sess:
            yield sess

    def attach(self, session_id: str, *, timeout: float | None = None) -> Session:
        """A handle for an existing session (its counter read from the server)."""
        return Session(self, self.get_session(session_id, timeout=timeout))

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """A session's info, including its step counter."""
        return SessionInfo.from_proto(self._get_session_proto(session_id, timeout))

    def _get_session_proto(self, session_id: str, timeout: float | None) -> pb.SessionInfo:
        req = pb.GetSessionRequest(session_id=session_id)
        result: pb.SessionInfo = self._unary(self._stub.GetSession, req, timeout, session_id)
        return result

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Closes a session; returns the step counter it had."""
        req = pb.CloseSessionRequest(session_id=session_id)
        resp = self._unary(self._stub.CloseSession, req, timeout, session_id)
        return int(resp.final_step)

    def fork_session(
        self,
        session_id: str,
        new_id: str | None = None,
        *,
        idle_ttl: float | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Copies a session's state and counter into a new session; returns its handle."""
        chosen = new_id or messages.new_request_id()
        req = messages.fork_request(session_id, chosen, idle_ttl)

        def adopt(attempt: int, error: SeqinferError) -> pb.SessionInfo | None:
            if attempt > 1 and new_id is None and isinstance(error, SessionExists):
                return self._get_session_proto(chosen, timeout)
            return None

        info = self._unary(self._stub.ForkSession, req, timeout, session_id, recover=adopt)
        return Session(self, SessionInfo.from_proto(info))

    def export_state(self, session_id: str, *, timeout: float | None = None) -> ExportedState:
        """``(state, info)``: the hidden state ``[num_layers, hidden_size]`` and the session."""
        req = pb.ExportStateRequest(session_id=session_id)
        resp = self._unary(self._stub.ExportState, req, timeout, session_id)
        return ExportedState(tensors.from_proto(resp.state), SessionInfo.from_proto(resp.session))

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
        req = messages.import_request(
            session_id,
            state,
            create=create,
            model=model,
            model_version=model_version,
            step=step,
            dtype=dtype,
        )
        return SessionInfo.from_proto(self._unary(self._stub.ImportState, req, timeout, session_id))

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
        call = StepCall(
            session_id=session_id,
            inputs=inputs,
            expected_step=expected_step,
            request_id=request_id,
            start=start,
            model=model,
            model_version=model_version,
            reset=reset,
            end=end,
            output_mode=output_mode,
            return_state=return_state,
            idle_ttl=idle_ttl,
            dtype=dtype,
        )
        kind = self._input_kind(model, model_version) if model and needs_kind(inputs) else None
        return self._step_proto(call.to_proto(kind), timeout)

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
        requests: list[pb.StepRequest] = []
        handles: list[Session | None] = []
        predicted: dict[int, int] = {}
        for item in items:
            if isinstance(item, StepCall):
                kind = None
                if item.model and needs_kind(item.inputs):
                    kind = self._input_kind(item.model, item.model_version)
                requests.append(item.to_proto(kind))
                handles.append(None)
            else:
                sess, inputs = item
                kind = (
                    self._input_kind(sess.model, sess.model_version) if needs_kind(inputs) else None
                )
                # A handle may appear more than once (its steps apply in
                # order): each item expects the counter after the previous one.
                expected = predicted.get(id(sess), sess.step_count)
                req = StepCall(sess.session_id, inputs, expected_step=expected).to_proto(kind)
                predicted[id(sess)] = expected + timesteps(req.inputs)
                requests.append(req)
                handles.append(sess)
        safe = all(r.HasField("expected_step") and r.request_id for r in requests)
        resp = self._unary(
            self._stub.StepMany, pb.StepManyRequest(steps=requests), timeout, idempotent=safe
        )
        return _step_many_results(resp, requests, handles)

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
        )

    # -- internals -----------------------------------------------------------

    def _step_proto(self, req: pb.StepRequest, timeout: float | None) -> StepOutput:
        safe = req.HasField("expected_step") and bool(req.request_id)
        resp = self._unary(self._stub.Step, req, timeout, req.session_id, idempotent=safe)
        return StepOutput.from_proto(resp)

    def _input_kind(self, model: str, version: str) -> InputKind | None:
        """The model's input kind, fetched once per model; None if unknown."""
        key = (model, version)
        with self._kinds_lock:
            if key in self._kinds:
                return self._kinds[key]
        try:
            info = self.get_model(model, version)
        except SeqinferError:
            return None  # let the server judge the inputs
        kind: InputKind | None = (
            info.input_kind if info.input_kind in ("dense", "tokens") else None  # type: ignore[assignment]
        )
        with self._kinds_lock:
            self._kinds[key] = kind
        return kind

    def _unary(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        session_id: str | None = None,
        *,
        idempotent: bool = True,
        recover: Callable[[int, SeqinferError], Any] | None = None,
    ) -> Any:
        metadata = call_metadata(self._metadata, self._options, session_id)

        def attempt(n: int, attempt_timeout: float | None) -> Any:
            try:
                return method(request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if recover is not None:
                    recovered = recover(n, error)
                    if recovered is not None:
                        return recovered
                raise error from exc

        effective = timeout if timeout is not None else self.timeout
        return call_with_retry(attempt, self.retry_policy, effective, idempotent=idempotent)


def _step_many_results(
    resp: pb.StepManyResponse,
    requests: list[pb.StepRequest],
    handles: Sequence[Any],
) -> list[StepManyResult]:
    """Pairs results with requests (by position, checked by request_id)."""
    if len(resp.results) != len(requests):
        raise SeqinferError(
            f"StepMany returned {len(resp.results)} results for {len(requests)} steps",
            code=grpc.StatusCode.INTERNAL,
        )
    out: list[StepManyResult] = []
    for req, result, handle in zip(requests, resp.results, handles, strict=True):
        value: StepManyResult
        if result.request_id and result.request_id != req.request_id:
            value = SeqinferError(
                f"StepMany result for {result.request_id!r} where {req.request_id!r} was expected",
                code=grpc.StatusCode.INTERNAL,
            )
        elif result.WhichOneof("outcome") == "response":
            value = StepOutput.from_proto(result.response)
        else:
            value = from_status(result.error)
        if handle is not None:
            if isinstance(value, StepOutput):
                handle._applied(value)
            elif isinstance(value, StepGap) and value.current_step is not None:
                handle.step_count = value.current_step
        out.append(value)
    return out
