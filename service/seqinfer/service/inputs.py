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

import numpy as np
import torch

from seqinfer.service.engine import OutputMode
from seqinfer.service.errors import InvalidInput, TooLarge, echo
from seqinfer.service.models.spec import InputKind, ModelSpec
from seqinfer.service.tensors import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    TORCH_DTYPES,
    decode,
    dtype_name,
)
from seqinfer.v1 import seqinfer_pb2 as pb

OUTPUT_MODES = {
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


def step_inputs(
    spec: ModelSpec, tensor: pb.Tensor, *, max_timesteps: int, allow_non_finite: bool
) -> np.ndarray:
    """[T, input_size] floats (dense) or [T] token ids, checked; a read-only view.

    Runs once per step request, so it reads each protobuf field once and
    checks shape before touching the bytes. The engine converts a whole
    batch to the model dtype at once.
    """
    field = "inputs"
    shape = tensor.shape
    code = tensor.dtype
    dense = spec.input_kind is InputKind.DENSE
    if dense:
        if code not in FLOAT_DTYPES:
            raise InvalidInput(
                f"{field}.dtype",
                f"model {spec.key} takes float features, got {dtype_name(code)}",
            )
        if len(shape) != 2 or shape[1] != spec.input_size:
            raise InvalidInput(
                f"{field}.shape",
                f"model {spec.key} takes [T, {spec.input_size}], got {echo(shape)}",
            )
    else:
        if code not in INT_DTYPES:
            raise InvalidInput(
                f"{field}.dtype",
                f"model {spec.key} takes int32/int64 token ids, got {dtype_name(code)}",
            )
        if len(shape) != 1:
            raise InvalidInput(
                f"{field}.shape", f"model {spec.key} takes [T] token ids, got {echo(shape)}"
            )
    timesteps = shape[0]
    if timesteps < 1:
        raise InvalidInput(f"{field}.shape", "T (the first dimension) must be at least 1")
    if timesteps > max_timesteps:
        raise TooLarge(
            f"{field}.shape",
            f"T = {timesteps} exceeds the limit of {max_timesteps} timesteps per request",
            max_timesteps=max_timesteps,
        )
    np_dtype = NUMPY_DTYPES.get(code)
    if np_dtype is None:  # bfloat16: numpy cannot view it
        values = decode(tensor, field).float().numpy()
    else:
        data = tensor.data
        count = timesteps * spec.input_size if dense else timesteps
        if len(data) != count * np_dtype.itemsize:
            raise InvalidInput(
                f"{field}.data",
                f"{len(data)} bytes do not hold shape {echo(shape)} of {dtype_name(code)} "
                f"({count * np_dtype.itemsize} bytes expected)",
            )
        values = np.frombuffer(data, np_dtype)
    if dense:
        values = values.reshape(timesteps, spec.input_size)
        if not allow_non_finite:
            model = spec.torch_dtype
            limit = _NARROWING.get((code, model))
            # Comparisons with NaN are false, so the range test also refuses NaN.
            ok = np.isfinite(values).all() if limit is None else (np.abs(values) <= limit).all()
            if not ok:
                raise InvalidInput(f"{field}.data", _not_representable(code, model))
        return values
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= spec.input_size:
        bad = low if low < 0 else high
        raise InvalidInput(
            f"{field}.data", f"token id {bad} is outside the vocabulary [0, {spec.input_size})"
        )
    return values


def state_tensor(spec: ModelSpec, tensor: pb.Tensor, field: str) -> torch.Tensor:
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
    source = decode(tensor, field)
    model = spec.torch_dtype
    limit = _NARROWING.get((tensor.dtype, model))
    ok = torch.isfinite(source).all() if limit is None else (source.abs() <= limit).all()
    if not bool(ok):
        raise InvalidInput(f"{field}.data", _not_representable(tensor.dtype, model))
    return source.to(model, copy=True)
