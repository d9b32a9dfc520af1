"""Planning a ``StepMany`` call and pairing its results, for both clients.

Planning needs one thing only I/O can give, the input kind of models whose
inputs are ambiguous; so it runs in two phases: :meth:`StepManyPlan.kinds_needed`
names the models to ask about, the client asks (blocking or awaiting), and
:meth:`StepManyPlan.call` builds the request from the answers. Everything
else, the counters a repeated handle predicts and how results move the
handles, is plain code here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from seqinfer.client.calls import Call
from seqinfer.client.datatypes import StepOutput
from seqinfer.client.errors import SeqinferError, StepGap, from_status
from seqinfer.client.handle import SessionState, needs_kind
from seqinfer.client.messages import StepCall
from seqinfer.client.tensors import InputKind, timesteps
from seqinfer.v1 import seqinfer_pb2 as pb

StepManyResult = StepOutput | SeqinferError
KindKey = tuple[str, str]


def _kind_key(item: Any) -> KindKey | None:
    if isinstance(item, StepCall):
        return (item.model, item.model_version) if item.model and needs_kind(item.inputs) else None
    sess, inputs = item
    return (sess.model, sess.model_version) if needs_kind(inputs) else None


class StepManyPlan:
    """The items of one ``step_many``: each a StepCall or ``(handle, inputs)``."""

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = list(items)

    def kinds_needed(self) -> list[KindKey]:
        """``(model, version)`` pairs whose input kind the request needs, each once."""
        keys: list[KindKey] = []
        for item in self._items:
            key = _kind_key(item)
            if key is not None and key not in keys:
                keys.append(key)
        return keys

    def call(self, kinds: Mapping[KindKey, InputKind | None]) -> Call[list[StepManyResult]]:
        """The StepMany call, given the kinds :meth:`kinds_needed` asked for."""
        requests: list[pb.StepRequest] = []
        handles: list[SessionState | None] = []
        predicted: dict[int, int] = {}
        for item in self._items:
            key = _kind_key(item)
            kind = kinds.get(key) if key is not None else None
            if isinstance(item, StepCall):
                requests.append(item.to_proto(kind))
                handles.append(None)
                continue
            sess, inputs = item
            # A handle may appear more than once (its steps apply in order):
            # each item expects the counter after the previous one.
            expected = predicted.get(id(sess), sess.step_count)
            req = StepCall(sess.session_id, inputs, expected_step=expected).to_proto(kind)
            predicted[id(sess)] = expected + timesteps(req.inputs)
            requests.append(req)
            handles.append(sess)
        safe = all(r.HasField("expected_step") and r.request_id for r in requests)
        return Call(
            "StepMany",
            pb.StepManyRequest(steps=requests),
            lambda resp: step_many_results(resp, requests, handles),
            idempotent=safe,
        )


def step_many_results(
    resp: pb.StepManyResponse,
    requests: list[pb.StepRequest],
    handles: Sequence[SessionState | None],
) -> list[StepManyResult]:
    """Pairs results with requests (by position, checked by request_id); moves the handles."""
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
