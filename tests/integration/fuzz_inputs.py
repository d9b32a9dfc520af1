"""Hypothesis strategies for tests/integration/test_fuzz.py: what a hostile client sends.

Two families. *Field values* are well-formed messages built through the
generated classes whose values sit at the edges of their types: uint64 up to
2^64-1, negative and huge int64 dims, NaN/Inf, float64 values beyond float32's
range, enum numbers the contract does not name, long strings. *Raw bytes* are
what the generated classes cannot produce: junk, truncated or bit-flipped
encodings of valid requests, invalid UTF-8 in string fields, bad wire types,
over-long varints, unterminated groups.

The fuzzed models are the test's "tiny" (dense, 8 features, GRU 16 x 2) and
"tok" (30 token ids, GRU 16 x 2). No strategy ever names CONTROL, the session
the test checks bit for bit afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from seqinfer.v1 import seqinfer_pb2 as pb

CONTROL = "fuzz-control"
FEATURES, VOCAB, STATE_SHAPE = 8, 30, (2, 16)

U64_EDGES = [0, 1, 2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
I64_EDGES = [-(2**63), -(2**31), -1, 0, 1, 2, 8, 30, 101, 2**31, 2**32 + 8, 2**62, 2**63 - 1]
FLOAT_EDGES = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 3.4e38, 3.5e38,
               1e39, -1e39, 1e308, -1e308, 5e-324, 1e-45, 65504.0, 65520.0]  # fmt: skip
LONG = ["x" * 300, "é" * 3000, "y" * 70_000]  # past the id limit; past gRPC's metadata limit
SESSION_IDS = ["s0", "s1", "s2", "t0", "", " ", "s0\n", "\x00", "é", "a" * 128, "a" * 129, *LONG]
MODELS = ["tiny", "tok", "", "nope", "TINY", *LONG]
VERSIONS = ["", "1", "01", "2", "-1", *LONG]

u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 2**64 - 1))
i64 = st.one_of(st.sampled_from(I64_EDGES), st.integers(-(2**63), 2**63 - 1))
doubles = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats())
words = st.one_of(st.sampled_from(SESSION_IDS), st.text(max_size=24)).filter(lambda s: s != CONTROL)


def enum_numbers(known: int) -> st.SearchStrategy[int]:
    """Named values 0..known and numbers the contract does not name (proto3 enums are open)."""
    return st.one_of(
        st.integers(0, known), st.sampled_from([known + 1, 99, -1, -(2**31), 2**31 - 1])
    )


# ------------------------------------------------------------------ tensors --

_CODES = {"<f4": pb.DTYPE_FLOAT32, "<f8": pb.DTYPE_FLOAT64, "<f2": pb.DTYPE_FLOAT16,
          "<i4": pb.DTYPE_INT32, "<i8": pb.DTYPE_INT64}  # fmt: skip


def _array_tensor(values: list[Any], dtype: str, shape: list[int]) -> pb.Tensor:
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(values, dtype=np.float64 if dtype[1] == "f" else np.int64)
        data = array.astype(dtype).tobytes()
    return pb.Tensor(dtype=_CODES[dtype], shape=shape, data=data)


@st.composite
def dense_tensors(
    draw: st.DrawFn,
    rows: tuple[int, ...] = (FEATURES,),
    steps: tuple[int, ...] = (1, 2, 3, 0, 100, 101),
) -> pb.Tensor:
    """[T, *rows] floats (or one row), values from the float edges, in a float wire dtype."""
    t = draw(st.sampled_from(steps))
    shape = [t, *rows] if draw(st.booleans()) or t != 1 else list(rows)
    count = int(np.prod(shape))
    fill = draw(st.one_of(st.just(0.5), doubles))
    values = [fill] * count
    for i in draw(st.lists(st.integers(0, max(count - 1, 0)), max_size=3)) if count else []:
        values[i] = draw(doubles)
    return _array_tensor(values, draw(st.sampled_from(["<f4", "<f8", "<f2"])), shape)


@st.composite
def token_tensors(draw: st.DrawFn) -> pb.Tensor:
    ids = draw(st.lists(st.one_of(st.integers(0, VOCAB - 1), i64), min_size=0, max_size=5))
    shape = [len(ids)] if draw(st.booleans()) else [len(ids), 1]
    return _array_tensor(ids, draw(st.sampled_from(["<i4", "<i8"])), shape)


@st.composite
def wild_tensors(draw: st.DrawFn) -> pb.Tensor:
    """Any dtype number, any dims (negative, zero, 2^63-1), data of any length."""
    return pb.Tensor(
        dtype=draw(enum_numbers(6)),
        shape=draw(st.lists(i64, max_size=4)),
        data=draw(st.binary(max_size=96)),
    )


@st.composite
def bfloat16_tensors(draw: st.DrawFn) -> pb.Tensor:
    shape = draw(st.sampled_from([[1, FEATURES], [FEATURES], [2, FEATURES], [1, FEATURES + 1]]))
    size = 2 * int(np.prod(shape))
    data = draw(
        st.one_of(st.binary(min_size=size, max_size=size), st.just(b"\x80\x7f" * (size // 2)))
    )
    return pb.Tensor(dtype=pb.DTYPE_BFLOAT16, shape=shape, data=data)


inputs = st.one_of(dense_tensors(), token_tensors(), wild_tensors(), bfloat16_tensors())
states = st.one_of(dense_tensors(rows=STATE_SHAPE[1:]), wild_tensors(), dense_tensors(rows=(16, 2)))


# ----------------------------------------------------------------- requests --


def _optional(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(strategy) if draw(st.booleans()) else None


def _build(cls: Any, **fields: Any) -> Any:
    return cls(**{k: v for k, v in fields.items() if v is not None})


@st.composite
def step_requests(draw: st.DrawFn) -> pb.StepRequest:
    return _build(
        pb.StepRequest,
        session_id=draw(words),
        inputs=_optional(draw, inputs),
        request_id=_optional(draw, words),
        expected_step=_optional(draw, u64),
        start=draw(st.booleans()),
        model=draw(st.one_of(st.sampled_from(MODELS), words)),
        model_version=draw(st.sampled_from(VERSIONS)),
        reset=draw(st.booleans()),
        end=draw(st.booleans()),
        output_mode=draw(enum_numbers(3)),
        return_state=draw(st.booleans()),
        idle_ttl_seconds=_optional(draw, doubles),
    )


def dense_tensors_ok(t: int) -> pb.Tensor:
    return _array_tensor([0.25] * (t * FEATURES), "<f4", [t, FEATURES])


@st.composite
def good_steps(draw: st.DrawFn) -> pb.StepRequest:
    """A valid step (creating its session), so streams carry real work beside bad frames."""
    tokens = draw(st.booleans())
    values = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=3))
    tensor = (
        _array_tensor(values, "<i8", [len(values)]) if tokens else dense_tensors_ok(len(values))
    )
    return pb.StepRequest(
        session_id=draw(st.sampled_from(["g0", "g1", "g2"])) + ("t" if tokens else "d"),
        inputs=tensor,
        start=True,
        model="tok" if tokens else "tiny",
    )


models_names = st.sampled_from(MODELS)
versions = st.sampled_from(VERSIONS)
maybe_ttl = st.none() | doubles


def _messages(cls: Any, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Messages of ``cls``; a field whose strategy draws None stays unset."""
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, **values))


REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "ListModels": st.just(pb.ListModelsRequest()),
    "GetModel": _messages(pb.GetModelRequest, name=models_names, version=versions),
    "OpenSession": _messages(
        pb.OpenSessionRequest,
        model=models_names,
        model_version=versions,
        session_id=words,
        initial_state=st.none() | states,
        idle_ttl_seconds=maybe_ttl,
    ),
    "GetSession": _messages(pb.GetSessionRequest, session_id=words),
    "CloseSession": _messages(pb.CloseSessionRequest, session_id=words),
    "ForkSession": _messages(
        pb.ForkSessionRequest, session_id=words, new_session_id=words, idle_ttl_seconds=maybe_ttl
    ),
    "ExportState": _messages(pb.ExportStateRequest, session_id=words),
    "ImportState": _messages(
        pb.ImportStateRequest,
        session_id=words,
        state=st.none() | states,
        create=st.booleans(),
        model=models_names,
        model_version=versions,
        step=st.none() | u64,
    ),
    "Step": step_requests(),
    "StepMany": st.lists(st.one_of(step_requests(), good_steps()), max_size=18).map(
        lambda steps: pb.StepManyRequest(steps=steps)
    ),
}
UNARY = sorted(REQUESTS)
STREAM = "StreamSteps"


# ---------------------------------------------------------------- raw bytes --


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\xfe", b"\xc0\xaf"]
BROKEN = [
    b"\x0a\x05ab",  # length past the end
    b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
    b"\x0f\x00",  # wire type 7 does not exist
    b"\x0e\x00",  # wire type 6 does not exist
    b"\x0b\x08\x01",  # a group that never ends
    b"\x0c",  # an end-group with no start
    b"\x00\x01",  # field number 0
    b"\x12",  # a tag and nothing after it
    b"\x1d\x00\x00",  # fixed32 cut short
]


@st.composite
def mutated(draw: st.DrawFn, method: str) -> bytes:
    """A valid request of ``method``, damaged one way."""
    base = bytearray(draw(REQUESTS.get(method, step_requests())).SerializeToString())
    how = draw(st.sampled_from(["truncate", "flip", "insert", "utf8", "broken", "junk"]))
    if how == "truncate" and base:
        return bytes(base[: draw(st.integers(0, len(base) - 1))])
    if how == "flip" and base:
        i = draw(st.integers(0, len(base) - 1))
        base[i] ^= draw(st.integers(1, 255))
        return bytes(base)
    if how == "insert":
        i = draw(st.integers(0, len(base)))
        return bytes(base[:i]) + draw(st.binary(min_size=1, max_size=8)) + bytes(base[i:])
    if how == "utf8":
        # Field 1 is a string in every request but StepMany, where it is a StepRequest
        # (whose field 1, session_id, is a string).
        bad = _field(1, draw(st.sampled_from(BAD_UTF8)))
        bad = _field(1, bad) if method == "StepMany" else bad
        string_field = draw(st.sampled_from([1, 3, 6, 7])) if method in ("Step", STREAM) else 1
        if string_field != 1:
            bad = _field(string_field, draw(st.sampled_from(BAD_UTF8)))
        return bytes(base) + bad  # a later occurrence of a field wins: the bad one is parsed
    if how == "broken":
        return bytes(base) + draw(st.sampled_from(BROKEN))
    return draw(st.binary(max_size=64))


def raw_requests(method: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), mutated(method))


stream_frames = st.lists(
    st.one_of(good_steps().map(lambda m: m.SerializeToString()), raw_requests(STREAM)),
    min_size=1,
    max_size=5,
)
stub_stream_requests = st.lists(st.one_of(good_steps(), step_requests()), min_size=1, max_size=5)


# --------------------------------------------------- counters at the edge --


@st.composite
def session_inputs(draw: st.DrawFn, model: str) -> pb.Tensor:
    """Inputs of the right shape for ``model``: mostly plain, else with edge values in them."""
    t = draw(st.integers(1, 3))
    if model == "tok":
        ids = draw(
            st.lists(st.one_of(st.just(1), st.sampled_from(I64_EDGES)), min_size=t, max_size=t)
        )
        return _array_tensor(ids, draw(st.sampled_from(["<i8", "<i4"])), [t])
    if draw(st.integers(0, 2)) == 0:
        return dense_tensors_ok(t)
    return draw(dense_tensors(steps=(1, 2, 3)))


@st.composite
def session_scenarios(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A valid session (imported, often with a step counter near 2^64), then every kind
    of call on it, with inputs of the right shape whose values sit at the edges.

    Single messages rarely line up a valid session with a later valid step on
    it, so this draws the sequence itself: (method, message) pairs, where a
    StreamSteps entry is a list of StepRequests.
    """
    sid = draw(st.sampled_from(["e0", "e1", "e2"]))
    model = draw(st.sampled_from(["tiny", "tok"]))
    start = draw(st.one_of(st.sampled_from([0, 2**64 - 3, 2**64 - 2, 2**64 - 1]), u64))
    state = _array_tensor([0.1] * (STATE_SHAPE[0] * STATE_SHAPE[1]), "<f4", list(STATE_SHAPE))
    calls: list[tuple[str, Any]] = [
        ("ImportState", pb.ImportStateRequest(session_id=sid, state=state, create=True,
                                              model=model, step=start)),
    ]  # fmt: skip

    def step() -> pb.StepRequest:
        expected = draw(st.sampled_from([None, start, start + 1, start - 1, 2**64 - 1]))
        return _build(
            pb.StepRequest,
            session_id=sid,
            inputs=draw(session_inputs(model)),
            expected_step=None if expected is None else expected % 2**64,
            output_mode=draw(st.integers(0, 3)),
            return_state=draw(st.booleans()),
            reset=draw(st.booleans()),
        )

    kinds = ["Step", "StepMany", STREAM, "ForkSession", "GetSession", "ExportState", "CloseSession"]
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=4)):
        if kind == "Step":
            calls.append((kind, step()))
        elif kind == "StepMany":
            calls.append(
                (kind, pb.StepManyRequest(steps=[step() for _ in range(draw(st.integers(1, 3)))]))
            )
        elif kind == STREAM:
            calls.append((kind, [step() for _ in range(draw(st.integers(1, 3)))]))
        elif kind == "ForkSession":
            calls.append(
                (kind, pb.ForkSessionRequest(session_id=sid, new_session_id=f"{sid}-fork"))
            )
            fork_step = pb.StepRequest(
                session_id=f"{sid}-fork", inputs=draw(session_inputs(model)), end=True
            )
            calls.append(("Step", fork_step))
        else:
            calls.append((kind, getattr(pb, f"{kind}Request")(session_id=sid)))
    return calls
