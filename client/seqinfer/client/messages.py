"""Step requests and wire encodings shared by the clients, handles and streams."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy.typing as npt

from seqinfer.client import tensors
from seqinfer.client.tensors import DTypeLike, InputKind
from seqinfer.v1 import seqinfer_pb2 as pb

OutputMode = Literal["last", "all", "none"]

_OUTPUT_MODES: dict[str, pb.OutputMode.ValueType] = {
    "last": pb.OUTPUT_MODE_LAST,
    "all": pb.OUTPUT_MODE_ALL,
    "none": pb.OUTPUT_MODE_NONE,
}

Inputs = npt.ArrayLike | pb.Tensor


def new_request_id() -> str:
    """A fresh request id: random, so that ids of different clients never collide."""
    return uuid.uuid4().hex


def output_mode(mode: OutputMode | str) -> pb.OutputMode.ValueType:
    """ "last" / "all" / "none" -> the wire enum."""
    try:
        return _OUTPUT_MODES[mode.lower()]
    except KeyError:
        raise ValueError(
            f"output_mode must be one of {sorted(_OUTPUT_MODES)}, got {mode!r}"
        ) from None


def encode_inputs(
    inputs: Inputs, dtype: DTypeLike = None, kind: InputKind | None = None
) -> pb.Tensor:
    """Inputs as a wire Tensor; an already encoded Tensor passes through."""
    if isinstance(inputs, pb.Tensor):
        return inputs
    return tensors.prepare_inputs(inputs, dtype=dtype, kind=kind)


def tensor_or_none(array: npt.ArrayLike | None, dtype: DTypeLike = None) -> pb.Tensor | None:
    """A state tensor, or None for "not given"."""
    if array is None:
        return None
    if isinstance(array, pb.Tensor):
        return array
    return tensors.to_proto(array, dtype)


@dataclass
class StepCall:
    """One step of one session, as an item of ``step_many``.

    Give ``expected_step`` (and keep ``request_id``) to make the item safe to
    retry; ``Session``-based items get both automatically.
    """

    session_id: str
    inputs: Inputs
    expected_step: int | None = None
    request_id: str | None = None
    start: bool = False
    model: str = ""
    model_version: str = ""
    reset: bool = False
    end: bool = False
    output_mode: OutputMode = "last"
    return_state: bool = False
    idle_ttl: float | None = None
    dtype: DTypeLike = None

    def to_proto(self, kind: InputKind | None = None) -> pb.StepRequest:
        """The wire request; fills in ``request_id`` if it was not set."""
        if self.request_id is None:
            self.request_id = new_request_id()
        req = pb.StepRequest(
            session_id=self.session_id,
            inputs=encode_inputs(self.inputs, self.dtype, kind),
            request_id=self.request_id,
            start=self.start,
            model=self.model,
            model_version=self.model_version,
            reset=self.reset,
            end=self.end,
            output_mode=output_mode(self.output_mode),
            return_state=self.return_state,
        )
        if self.expected_step is not None:
            req.expected_step = self.expected_step
        if self.idle_ttl is not None:
            req.idle_ttl_seconds = self.idle_ttl
        return req


#: The keyword options of a step, in StepCall's order: the public step
#: methods (``Client.step``, ``AsyncClient.step``, both streams' ``submit``)
#: take exactly these, plus ``timeout`` for the unary ones.
STEP_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(StepCall))[2:]


def step_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The StepCall options among a public step method's ``locals()``.

    The public step methods spell their keywords out, for ``help()``, IDEs
    and type checkers, but pass them on through here instead of a forwarding
    block each: a new step option is then added to StepCall and to those
    signatures only, and tests/unit/test_client_parity.py fails if a
    signature misses it.
    """
    return {name: arguments[name] for name in STEP_OPTIONS}
