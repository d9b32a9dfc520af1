"""The client's numpy <-> wire Tensor codec and input shaping."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from seqinfer.client import tensors
from seqinfer.client.tensors import TensorError, from_proto, prepare_inputs, to_proto
from seqinfer.v1 import seqinfer_pb2 as pb


@pytest.mark.parametrize(
    ("dtype", "enum"),
    [
        ("float32", pb.DTYPE_FLOAT32),
        ("float64", pb.DTYPE_FLOAT64),
        ("float16", pb.DTYPE_FLOAT16),
        ("int32", pb.DTYPE_INT32),
        ("int64", pb.DTYPE_INT64),
    ],
)
def test_round_trip_every_dtype(dtype: str, enum: int) -> None:
    arr = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    t = to_proto(arr)
    assert t.dtype == enum
    assert list(t.shape) == [3, 4]
    assert len(t.data) == arr.nbytes
    back = from_proto(t)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)
    back[0, 0] = 99  # decoded arrays are writable copies
    assert back.flags.writeable


def test_wire_bytes_are_little_endian_c_order() -> None:
    arr = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=">f4").T  # big-endian, Fortran view
    t = to_proto(arr)
    expected = struct.pack("<4f", 1.5, 3.25, -2.0, 4.0)
    assert t.data == expected
    np.testing.assert_array_equal(from_proto(t), arr)


def test_cast_on_encode() -> None:
    t = to_proto([1, 2, 3], "float32")
    assert t.dtype == pb.DTYPE_FLOAT32
    np.testing.assert_array_equal(from_proto(t), np.array([1, 2, 3], dtype=np.float32))


def test_bfloat16_encode_rounds_to_nearest_even_and_decodes_exactly() -> None:
    # 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
    # 1 + 3*2^-8 is halfway between 1+2^-7 and 1+2^-6: ties go to even (1+2^-6).
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -3.5, np.inf], dtype=np.float32)
    t = to_proto(values, "bfloat16")
    assert t.dtype == pb.DTYPE_BFLOAT16
    assert len(t.data) == 2 * values.size
    back = from_proto(t)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [1.0, 1.0, 1 + 2**-6, -3.5, np.inf])
    nan = from_proto(to_proto(np.array([np.nan], dtype=np.float32), "bf16"))
    assert np.isnan(nan[0])


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(TensorError, match="not supported"):
        to_proto(np.zeros(3, dtype=np.uint8))


def test_decode_checks_byte_count() -> None:
    t = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 2], data=b"\0" * 12)
    with pytest.raises(TensorError, match="needs 16 bytes, got 12"):
        from_proto(t)
    with pytest.raises(TensorError, match="unknown wire dtype"):
        from_proto(pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1], data=b"\0" * 4))


def test_dense_inputs_shapes_and_default_dtype() -> None:
    one = prepare_inputs([0.5, 1.0, 2.0])  # one float vector -> [1, F]
    assert list(one.shape) == [1, 3] and one.dtype == pb.DTYPE_FLOAT32
    many = prepare_inputs(np.ones((4, 3)))  # float64 array: float32 on the wire by default
    assert list(many.shape) == [4, 3] and many.dtype == pb.DTYPE_FLOAT32
    ints_2d = prepare_inputs([[1, 2], [3, 4]])  # 2-D is dense whatever the dtype
    assert ints_2d.dtype == pb.DTYPE_FLOAT32
    f64 = prepare_inputs(np.ones((2, 3)), dtype="float64")
    assert f64.dtype == pb.DTYPE_FLOAT64
    # A 1-D int vector is dense when the model says so.
    assert list(prepare_inputs([1, 0, 1], kind="dense").shape) == [1, 3]
    with pytest.raises(TensorError, match=r"\[T, F\]"):
        prepare_inputs(np.zeros((1, 2, 3)))


def test_token_inputs_shapes_and_default_dtype() -> None:
    one = prepare_inputs(7)
    assert list(one.shape) == [1] and one.dtype == pb.DTYPE_INT64
    assert from_proto(one).tolist() == [7]
    seq = prepare_inputs([1, 2, 3])
    assert list(seq.shape) == [3] and seq.dtype == pb.DTYPE_INT64
    i32 = prepare_inputs(np.array([1, 2], dtype=np.int32), dtype="int32")
    assert i32.dtype == pb.DTYPE_INT32
    # Whole floats are accepted as ids when the model takes tokens.
    assert from_proto(prepare_inputs([3.0, 4.0], kind="tokens")).tolist() == [3, 4]
    with pytest.raises(TensorError, match="integers"):
        prepare_inputs([1.5], kind="tokens")
    with pytest.raises(TensorError, match=r"\[T\]"):
        prepare_inputs([[1, 2]], kind="tokens")
    with pytest.raises(TensorError, match="numbers"):
        prepare_inputs([True, False])


def test_timesteps() -> None:
    assert tensors.timesteps(prepare_inputs(np.zeros((5, 2)))) == 5
    assert tensors.timesteps(prepare_inputs(3)) == 1
