"""proto ``Tensor`` ⇄ ``torch.Tensor``: raw little-endian bytes, no per-element objects."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch

from seqinfer.service.errors import InvalidInput, echo
from seqinfer.service.protocol import TensorData
from seqinfer.v1 import seqinfer_pb2 as pb

# The wire format is little-endian; decoding with frombuffer is only a
# reinterpretation of the bytes on a little-endian host.
assert sys.byteorder == "little", "seqinfer assumes a little-endian host"

# torch.frombuffer warns that protobuf's bytes are read-only; we never write
# to the view (inputs are copied when a batch is stacked).
warnings.filterwarnings("ignore", message="The given buffer is not writable")

TORCH_DTYPES: dict[int, torch.dtype] = {
    pb.DTYPE_FLOAT32: torch.float32,
    pb.DTYPE_FLOAT64: torch.float64,
    pb.DTYPE_FLOAT16: torch.float16,
    pb.DTYPE_BFLOAT16: torch.bfloat16,
    pb.DTYPE_INT32: torch.int32,
    pb.DTYPE_INT64: torch.int64,
}
PROTO_DTYPES: dict[torch.dtype, int] = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_DTYPES = frozenset({pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16})
INT_DTYPES = frozenset({pb.DTYPE_INT32, pb.DTYPE_INT64})


def dtype_name(code: int) -> str:
    try:
        return pb.DType.Name(code)  # type: ignore[arg-type]
    except ValueError:
        return str(code)


def decode(tensor: pb.Tensor, field: str) -> torch.Tensor:
    """A read-only torch view of the tensor's bytes, shape and size checked."""
    dtype = TORCH_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidInput(f"{field}.dtype", f"unsupported dtype {dtype_name(tensor.dtype)}")
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"negative dimension in {echo(shape)}")
    count = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = count * itemsize
    if len(tensor.data) != expected:
        # A shape of many large dims makes a number too long to print (Python
        # refuses str() of ints over 4300 digits).
        size = f"{expected} bytes" if expected < 2**64 else "over 2^64 bytes"
        raise InvalidInput(
            f"{field}.data",
            f"{len(tensor.data)} bytes do not hold shape {echo(shape)} of "
            f"{dtype_name(tensor.dtype)} ({size} expected)",
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(tensor.data, dtype=dtype).view(shape)


def encode(value: torch.Tensor) -> pb.Tensor:
    value = value.detach().to("cpu").contiguous()
    return pb.Tensor(
        dtype=PROTO_DTYPES[value.dtype],  # type: ignore[arg-type]
        shape=list(value.shape),
        data=value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"",
    )


# numpy has no bfloat16: those tensors take the torch path (``decode``). The hot
# path decodes with numpy: a view plus checks costs microseconds where torch
# costs several tensor ops.
NUMPY_DTYPES: dict[int, np.dtype[np.generic]] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
}
PROTO_FROM_NUMPY: dict[np.dtype[np.generic], int] = {v: k for k, v in NUMPY_DTYPES.items()}


def fill_tensor(tensor: pb.Tensor, value: np.ndarray) -> None:
    """Write an array into a Tensor field in place (no intermediate message)."""
    tensor.dtype = PROTO_FROM_NUMPY[value.dtype]  # type: ignore[assignment]
    tensor.shape.extend(value.shape)
    tensor.data = value.tobytes()


def to_wire(value: torch.Tensor) -> TensorData:
    """A tensor as plain data (the seam's form of it): exact dtype, shape, raw bytes."""
    value = value.detach().to("cpu").contiguous()
    data = value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b""
    return TensorData(PROTO_DTYPES[value.dtype], list(value.shape), data)
