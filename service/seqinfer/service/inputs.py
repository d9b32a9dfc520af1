"""Checks a request's tensors against a model's spec and converts them for the engine."""

from __future__ import annotations

import numpy as np
import torch

from seqinfer.service.errors import InvalidInput, TooLarge
from seqinfer.service.models.spec import InputKind, ModelSpec
from seqinfer.service.tensors import FLOAT_DTYPES, INT_DTYPES, NUMPY_DTYPES, decode, dtype_name
from seqinfer.v1 import seqinfer_pb2 as pb


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
                f"model {spec.key} takes [T, {spec.input_size}], got {list(shape)}",
            )
    else:
        if code not in INT_DTYPES:
            raise InvalidInput(
                f"{field}.dtype",
                f"model {spec.key} takes int32/int64 token ids, got {dtype_name(code)}",
            )
        if len(shape) != 1:
            raise InvalidInput(
                f"{field}.shape", f"model {spec.key} takes [T] token ids, got {list(shape)}"
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
                f"{len(data)} bytes do not hold shape {list(shape)} of {dtype_name(code)} "
                f"({count * np_dtype.itemsize} bytes expected)",
            )
        values = np.frombuffer(data, np_dtype)
    if dense:
        values = values.reshape(timesteps, spec.input_size)
        if not allow_non_finite and not np.isfinite(values).all():
            raise InvalidInput(f"{field}.data", "contains NaN or Inf")
        return values
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= spec.input_size:
        bad = low if low < 0 else high
        raise InvalidInput(
            f"{field}.data", f"token id {bad} is outside the vocabulary [0, {spec.input_size})"
        )
    return values


def state_tensor(spec: ModelSpec, tensor: pb.Tensor, field: str) -> torch.Tensor:
    """A hidden state [num_layers, hidden_size], finite, in the model dtype."""
    expected = [spec.num_layers, spec.hidden_size]
    if tensor.dtype not in FLOAT_DTYPES:
        raise InvalidInput(
            f"{field}.dtype", f"state must be a float tensor, got {dtype_name(tensor.dtype)}"
        )
    if list(tensor.shape) != expected:
        raise InvalidInput(
            f"{field}.shape",
            f"model {spec.key} has state shape {expected}, got {list(tensor.shape)}",
        )
    state = decode(tensor, field).to(spec.torch_dtype, copy=True)
    if not bool(torch.isfinite(state).all()):
        raise InvalidInput(f"{field}.data", "contains NaN or Inf")
    return state
