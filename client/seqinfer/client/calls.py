"""Each unary RPC as a :class:`Call`: its request, its reply decoder, its retry facts.

Building a request and decoding its reply involve no I/O, so they live here
once instead of in both :class:`~seqinfer.client.Client` and
:class:`~seqinfer.client.AsyncClient`. A twin's method is then its public
signature plus one ``send``: the sync client drives the call with blocking
gRPC, the async one awaits it, and neither decides anything else.

A ``Call`` also carries the two decisions a retry loop needs and cannot
make from a status alone: whether the call may be repeated at all
(``idempotent``), and whether an error on a repeat means that an earlier,
lost attempt already succeeded (``adoption``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy.typing as npt

from seqinfer.client import messages, tensors
from seqinfer.client.datatypes import ExportedState, ModelInfo, SessionInfo, StepOutput
from seqinfer.client.errors import SeqinferError, SessionExists
from seqinfer.client.tensors import DTypeLike
from seqinfer.v1 import seqinfer_pb2 as pb

R = TypeVar("R")


def _raw(reply: Any) -> Any:
    return reply


@dataclass(frozen=True)
class Call(Generic[R]):
    """One unary RPC, ready to send.

    Attributes:
        method: the stub attribute (the RPC's name).
        request: the request message.
        decode: turns the reply message into what the public method returns.
        session_id: the session it concerns, for the routing header.
        idempotent: whether sending it twice is harmless (retries allowed).
        adopt_id: the session id this client picked at random for a new
            session; see :meth:`adoption`.
    """

    method: str
    request: Any
    decode: Callable[[Any], R]
    session_id: str | None = None
    idempotent: bool = True
    adopt_id: str | None = None

    def adoption(self, attempt: int, error: SeqinferError) -> Call[pb.SessionInfo] | None:
        """The read that stands in for this call after ``error``, or None to raise it.

        Our own random id exists on a repeat only because the lost first
        attempt created it, so the session is ours to adopt rather than a
        second one to open. A caller-chosen id may belong to someone else:
        that SESSION_EXISTS is raised.
        """
        if self.adopt_id is not None and attempt > 1 and isinstance(error, SessionExists):
            req = pb.GetSessionRequest(session_id=self.adopt_id)
            return Call("GetSession", req, _raw, self.adopt_id)
        return None


def list_models() -> Call[list[ModelInfo]]:
    return Call(
        "ListModels",
        pb.ListModelsRequest(),
        lambda resp: [ModelInfo.from_proto(m) for m in resp.models],
    )


def get_model(name: str, version: str) -> Call[ModelInfo]:
    req = pb.GetModelRequest(name=name, version=version)
    return Call("GetModel", req, ModelInfo.from_proto)


def open_session(
    model: str,
    session_id: str | None,
    *,
    model_version: str,
    initial_state: npt.ArrayLike | None,
    idle_ttl: float | None,
) -> Call[SessionInfo]:
    # An id is always sent, never left to the server, so that a retry after
    # a lost reply names the session the first attempt may have created.
    chosen = session_id or messages.new_request_id()
    req = pb.OpenSessionRequest(model=model, model_version=model_version, session_id=chosen)
    state = messages.tensor_or_none(initial_state)
    if state is not None:
        req.initial_state.CopyFrom(state)
    if idle_ttl is not None:
        req.idle_ttl_seconds = idle_ttl
    adopt = chosen if session_id is None else None
    return Call("OpenSession", req, SessionInfo.from_proto, chosen, adopt_id=adopt)


def get_session(session_id: str) -> Call[SessionInfo]:
    req = pb.GetSessionRequest(session_id=session_id)
    return Call("GetSession", req, SessionInfo.from_proto, session_id)


def close_session(session_id: str) -> Call[int]:
    req = pb.CloseSessionRequest(session_id=session_id)
    return Call("CloseSession", req, lambda resp: int(resp.final_step), session_id)


def fork_session(session_id: str, new_id: str | None, idle_ttl: float | None) -> Call[SessionInfo]:
    chosen = new_id or messages.new_request_id()
    req = pb.ForkSessionRequest(session_id=session_id, new_session_id=chosen)
    if idle_ttl is not None:
        req.idle_ttl_seconds = idle_ttl
    adopt = chosen if new_id is None else None
    return Call("ForkSession", req, SessionInfo.from_proto, session_id, adopt_id=adopt)


def export_state(session_id: str) -> Call[ExportedState]:
    req = pb.ExportStateRequest(session_id=session_id)
    return Call(
        "ExportState",
        req,
        lambda resp: ExportedState(
            tensors.from_proto(resp.state), SessionInfo.from_proto(resp.session)
        ),
        session_id,
    )


def import_state(
    session_id: str,
    state: npt.ArrayLike,
    *,
    create: bool,
    model: str,
    model_version: str,
    step: int | None,
    dtype: DTypeLike,
) -> Call[SessionInfo]:
    tensor = messages.tensor_or_none(state, dtype)
    assert tensor is not None  # state is required; None is rejected by the type
    req = pb.ImportStateRequest(
        session_id=session_id, state=tensor, create=create, model=model,
        model_version=model_version,
    )  # fmt: skip
    if step is not None:
        req.step = step
    return Call("ImportState", req, SessionInfo.from_proto, session_id)


def step(request: pb.StepRequest) -> Call[StepOutput]:
    """A step; only safe to repeat when the server can tell a repeat from a new step."""
    safe = request.HasField("expected_step") and bool(request.request_id)
    return Call("Step", request, StepOutput.from_proto, request.session_id, idempotent=safe)
