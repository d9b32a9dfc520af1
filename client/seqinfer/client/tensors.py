"""numpy arrays <-> ``seqinfer.v1.Tensor``.

The wire format is raw little-endian bytes in C order plus a dtype enum and a
shape, so encoding is one ``tobytes`` and decoding one ``frombuffer``: no
per-element Python objects on either side.

numpy has no bfloat16. Decoding a bfloat16 tensor widens it to float32, which
is exact (bfloat16 is the top half of a float32). Encoding to bfloat16 is
available by asking for ``dtype="bfloat16"`` and rounds float32 to nearest
even, as torch does.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from seqinfer.v1 import seqinfer_pb2 as pb

BFLOAT16 = "bfloat16"

# Little-endian numpy dtypes for each wire dtype (bfloat16 handled apart).
_TO_NUMPY: dict[pb.DType.ValueType, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY: dict[str, pb.DType.ValueType] = {
    "float32": pb.DTYPE_FLOAT32,
    "float64": pb.DTYPE_FLOAT64,
    "float16": pb.DTYPE_FLOAT16,
    "int32": pb.DTYPE_INT32,
    "int64": pb.DTYPE_INT64,
}

DTypeLike = str | np.dtype[Any] | type[np.generic] | None
InputKind = Literal["dense", "tokens"]


class TensorError(ValueError):
    """An array cannot be put on the wire (or a wire tensor is malformed)."""


def dtype_name(dtype: DTypeLike) -> str:
    """Canonical name ("float32", ..., "bfloat16") of a numpy dtype or a name."""
    if isinstance(dtype, str) and dtype.lower() in (BFLOAT16, "bf16"):
        return BFLOAT16
    try:
        return np.dtype(dtype).name
    except TypeError as exc:
        raise TensorError(f"unknown dtype {dtype!r}") from exc


def to_proto(array: npt.ArrayLike, dtype: DTypeLike = None) -> pb.Tensor:
    """Encodes an array (cast to ``dtype`` if given) as a wire Tensor."""
    arr = np.asarray(array)
    name = dtype_name(dtype) if dtype is not None else arr.dtype.name
    if name == BFLOAT16:
        return pb.Tensor(
            dtype=pb.DTYPE_BFLOAT16, shape=arr.shape, data=_float32_to_bf16_bits(arr).tobytes()
        )
    enum = _FROM_NUMPY.get(name)
    if enum is None:
        supported = ", ".join([*_FROM_NUMPY, BFLOAT16])
        raise TensorError(f"dtype {name} is not supported on the wire (supported: {supported})")
    wire = _TO_NUMPY[enum]
    # ascontiguousarray + astype: one copy at most, and none for an array that
    # is already C-ordered little-endian of the right type.
    out = np.ascontiguousarray(arr.astype(wire, copy=False))
    return pb.Tensor(dtype=enum, shape=out.shape, data=out.tobytes())


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decodes a wire Tensor into a new, writable numpy array."""
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"negative dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.dtype == pb.DTYPE_BFLOAT16:
        bits = _frombuffer(tensor.data, np.dtype("<u2"), count, shape)
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    wire = _TO_NUMPY.get(tensor.dtype)
    if wire is None:
        raise TensorError(f"unknown wire dtype {tensor.dtype}")
    # Copy so that callers own a writable array, and convert to native order.
    return _frombuffer(tensor.data, wire, count, shape).astype(wire.newbyteorder("="))


def _frombuffer(data: bytes, wire: np.dtype[Any], count: int, shape: tuple[int, ...]) -> Any:
    if len(data) != count * wire.itemsize:
        raise TensorError(
            f"tensor of shape {shape} and itemsize {wire.itemsize} needs "
            f"{count * wire.itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=wire, count=count).reshape(shape)


def _float32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even; NaN stays NaN."""
    f32 = np.ascontiguousarray(arr, dtype="<f4")
    bits = f32.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype("<u2")
    nan = np.isnan(f32)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def prepare_inputs(
    inputs: npt.ArrayLike, dtype: DTypeLike = None, kind: InputKind | None = None
) -> pb.Tensor:
    """Shapes one step's inputs as the contract wants and encodes them.

    Dense models take ``[T, F]`` floats; a single ``[F]`` vector becomes
    ``[1, F]``. Token models take ``[T]`` ids; a scalar id becomes ``[1]``.
    ``kind`` says which when the caller knows the model; otherwise it is read
    from the array: 2-D or float 1-D is dense, integer 1-D or 0-D is tokens.
    Without ``dtype`` floats are sent as float32 and ids as int64.
    """
    arr = np.asarray(inputs)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TensorError(f"inputs must be numbers, got dtype {arr.dtype}")
    if kind is None:
        kind = "dense" if arr.ndim >= 2 or (arr.ndim == 1 and arr.dtype.kind == "f") else "tokens"
    if kind == "dense":
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise TensorError(f"dense inputs must have shape [T, F] or [F], got {arr.shape}")
        return to_proto(arr, dtype if dtype is not None else "float32")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise TensorError(f"token inputs must have shape [T] or be one id, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise TensorError("token ids must be integers")
    return to_proto(arr, dtype if dtype is not None else "int64")


def timesteps(tensor: pb.Tensor) -> int:
    """T of an encoded inputs tensor: its first dimension."""
    return int(tensor.shape[0]) if len(tensor.shape) else 1
