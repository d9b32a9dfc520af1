"""Checks a request's tensors against a model's spec and converts them for the engine.

Finiteness is checked for the values the model will compute with, not the
values on the wire: the engine converts inputs to the model's dtype, and a
finite float64 beyond float32's range (or a float32 beyond float16's) becomes
±Inf there and then NaN in the session's state for good. Where the wire dtype
can hold finite values the model dtype cannot, every value must lie within
the model dtype's largest finite value; a bound on the value rather than a
check of the converted tensor, because the rounding at the very edge of the
range differs between CPU and CUDA conversions and the check must not depend
on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from seqinfer.service.engine import OutputMode
from seqinfer.service.errors import InvalidInput, SeqinferError, TooLarge, echo
from seqinfer.service.models.spec import InputKind, ModelSpec
from seqinfer.service.protocol import StepBatch, TensorData
from seqinfer.service.tensors import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    TORCH_DTYPES,
    decode,
    dtype_name,
)
from seqinfer.v1 import seqinfer_pb2 as pb

if TYPE_CHECKING:
    from seqinfer.service.runtime import ModelRuntime

FIELD = "inputs"
# A StepMany step's inputs: (model key, values or the error), None when its
# model could not be found (admission reports that itself).
Decoded = tuple[str, "np.ndarray | SeqinferError"] | None

OUTPUT_MODES: dict[int, OutputMode] = {
    pb.OUTPUT_MODE_UNSPECIFIED: OutputMode.LAST,
    pb.OUTPUT_MODE_LAST: OutputMode.LAST,
    pb.OUTPUT_MODE_ALL: OutputMode.ALL,
    pb.OUTPUT_MODE_NONE: OutputMode.NONE,
}
_FLOAT_TORCH = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (wire dtype, model dtype) -> the model dtype's largest finite value, for the
# pairs where a finite wire value can overflow in the conversion.
_NARROWING: dict[tuple[int, torch.dtype], float] = {
    (code, model): float(torch.finfo(model).max)
    for code in FLOAT_DTYPES
    for model in _FLOAT_TORCH
    if torch.finfo(TORCH_DTYPES[code]).max > torch.finfo(model).max
}


def _not_representable(code: int, model: torch.dtype) -> str:
    limit = _NARROWING.get((code, model))
    if limit is None:
        return "contains NaN or Inf"
    return (
        f"contains NaN, Inf or a value beyond ±{limit:.6g}, the largest finite "
        f"{str(model).removeprefix('torch.')} (the model's dtype)"
    )


class WireTensor(Protocol):
    """A tensor as the contract sends it: ``pb.Tensor`` or ``protocol.TensorData``."""

    @property
    def dtype(self) -> Any: ...
    @property
    def shape(self) -> Sequence[int]: ...
    @property
    def data(self) -> bytes: ...


def step_inputs(
    spec: ModelSpec, tensor: WireTensor, *, max_timesteps: int, allow_non_finite: bool
) -> np.ndarray:
    """[T, input_size] floats (dense) or [T] token ids, checked; a read-only view.

    Runs once per step request, so it reads each field once and checks shape
    before touching the bytes. The engine converts a whole batch to the
    model dtype at once.
    """
    code = tensor.dtype
    shape = tensor.shape
    data = tensor.data
    np_dtype, _ = _check_header(spec, code, shape, len(data), max_timesteps)
    if np_dtype is None:  # bfloat16: numpy cannot view it
        values = decode(tensor, FIELD).float().numpy()  # type: ignore[arg-type]
    else:
        values = np.frombuffer(data, np_dtype)
    if spec.input_kind is InputKind.DENSE:
        values = values.reshape(shape[0], spec.input_size)
    problem = _value_problem(spec, code, values, allow_non_finite)
    if problem is not None:
        raise problem
    return values


def batch_inputs(
    batch: StepBatch,
    start: int,
    model_of: Callable[[str, bool, str, str], ModelRuntime],
    *,
    max_timesteps: int,
    allow_non_finite: bool,
) -> list[Decoded]:
    """Steps ``start..`` of a StepMany decoded column-wise: per step its model's key and
    inputs (as ``step_inputs`` returns them) or the error ``step_inputs`` would raise.

    Shapes are checked per step (plain ints); the bytes of all steps of one
    model and wire dtype are joined, viewed and checked for finiteness once,
    and only a group that fails is checked step by step to find the culprits.
    """
    size = len(batch) - start
    decoded: list[Decoded] = [None] * size
    groups: dict[tuple[str, int], list[int]] = {}
    specs: dict[str, ModelSpec] = {}
    dtypes, shapes, data = batch.dtypes, batch.shapes, batch.data
    for k in range(start, len(batch)):
        try:
            runtime = model_of(
                batch.session_ids[k], batch.starts[k], batch.models[k], batch.model_versions[k]
            )
        except SeqinferError:
            continue  # admission raises it again, in its own order of checks
        spec = runtime.spec
        code = dtypes[k]
        try:
            np_dtype, _ = _check_header(spec, code, shapes[k], len(data[k]), max_timesteps)
        except SeqinferError as error:
            decoded[k - start] = (runtime.key, error)
            continue
        if np_dtype is None:
            decoded[k - start] = _single(runtime, batch, k, max_timesteps, allow_non_finite)
            continue
        specs[runtime.key] = spec
        groups.setdefault((runtime.key, code), []).append(k)
    for (key, code), members in groups.items():
        spec = specs[key]
        np_dtype = NUMPY_DTYPES[code]
        whole = np.frombuffer(b"".join([data[k] for k in members]), np_dtype)
        dense = spec.input_kind is InputKind.DENSE
        width = spec.input_size if dense else 1
        if dense:
            whole = whole.reshape(-1, width)
        checked = _value_problem(spec, code, whole, allow_non_finite) is None
        row = 0
        for k in members:
            timesteps = shapes[k][0]
            values = whole[row : row + timesteps]
            row += timesteps
            problem = None if checked else _value_problem(spec, code, values, allow_non_finite)
            decoded[k - start] = (key, values if problem is None else problem)
    return decoded


def _single(
    runtime: ModelRuntime, batch: StepBatch, k: int, max_timesteps: int, allow_non_finite: bool
) -> Decoded:
    tensor = TensorData(batch.dtypes[k], batch.shapes[k], batch.data[k])
    try:
        values = step_inputs(
            runtime.spec, tensor, max_timesteps=max_timesteps, allow_non_finite=allow_non_finite
        )
    except SeqinferError as error:
        return (runtime.key, error)
    return (runtime.key, values)


def _check_header(
    spec: ModelSpec, code: int, shape: Sequence[int], data_bytes: int, max_timesteps: int
) -> tuple[np.dtype[Any] | None, int]:
    """Dtype, shape and byte count against the model; (numpy dtype or None, element count)."""
    dense = spec.input_kind is InputKind.DENSE
    if dense:
        if code not in FLOAT_DTYPES:
            raise InvalidInput(
                f"{FIELD}.dtype",
                f"model {spec.key} takes float features, got {dtype_name(code)}",
            )
        if len(shape) != 2 or shape[1] != spec.input_size:
            raise InvalidInput(
                f"{FIELD}.shape",
                f"model {spec.key} takes [T, {spec.input_size}], got {echo(shape)}",
            )
    else:
        if code not in INT_DTYPES:
            raise InvalidInput(
                f"{FIELD}.dtype",
                f"model {spec.key} takes int32/int64 token ids, got {dtype_name(code)}",
            )
        if len(shape) != 1:
            raise InvalidInput(
                f"{FIELD}.shape", f"model {spec.key} takes [T] token ids, got {echo(shape)}"
            )
    timesteps = shape[0]
    if timesteps < 1:
        raise InvalidInput(f"{FIELD}.shape", "T (the first dimension) must be at least 1")
    if timesteps > max_timesteps:
        raise TooLarge(
            f"{FIELD}.shape",
            f"T = {timesteps} exceeds the limit of {max_timesteps} timesteps per request",
            max_timesteps=max_timesteps,
        )
    count = timesteps * spec.input_size if dense else timesteps
    np_dtype = NUMPY_DTYPES.get(code)
    if np_dtype is not None and data_bytes != count * np_dtype.itemsize:
        raise InvalidInput(
            f"{FIELD}.data",
            f"{data_bytes} bytes do not hold shape {echo(shape)} of {dtype_name(code)} "
            f"({count * np_dtype.itemsize} bytes expected)",
        )
    return np_dtype, count


def _value_problem(
    spec: ModelSpec, code: int, values: np.ndarray, allow_non_finite: bool
) -> InvalidInput | None:
    """Why these values cannot be computed with (None: they can)."""
    if spec.input_kind is InputKind.DENSE:
        if allow_non_finite:
            return None
        model = spec.torch_dtype
        limit = _NARROWING.get((code, model))
        # Comparisons with NaN are false, so the range test also refuses NaN.
        ok = np.isfinite(values).all() if limit is None else (np.abs(values) <= limit).all()
        return None if ok else InvalidInput(f"{FIELD}.data", _not_representable(code, model))
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= spec.input_size:
        bad = low if low < 0 else high
        return InvalidInput(
            f"{FIELD}.data", f"token id {bad} is outside the vocabulary [0, {spec.input_size})"
        )
    return None


def state_tensor(spec: ModelSpec, tensor: WireTensor, field: str) -> torch.Tensor:
    """A hidden state [num_layers, hidden_size], finite in the model dtype, converted to it."""
    expected = [spec.num_layers, spec.hidden_size]
    if tensor.dtype not in FLOAT_DTYPES:
        raise InvalidInput(
            f"{field}.dtype", f"state must be a float tensor, got {dtype_name(tensor.dtype)}"
        )
    shape = tensor.shape  # compared item by item: a hostile shape may have millions of dims
    if len(shape) != 2 or shape[0] != expected[0] or shape[1] != expected[1]:
        raise InvalidInput(
            f"{field}.shape",
            f"model {spec.key} has state shape {expected}, got {echo(shape)}",
        )
    source = decode(tensor, field)  # type: ignore[arg-type]
    model = spec.torch_dtype
    limit = _NARROWING.get((tensor.dtype, model))
    ok = torch.isfinite(source).all() if limit is None else (source.abs() <= limit).all()
    if not bool(ok):
        raise InvalidInput(f"{field}.data", _not_representable(tensor.dtype, model))
    return source.to(model, copy=True)
