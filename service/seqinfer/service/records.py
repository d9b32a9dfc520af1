"""A session as one self-checking record of bytes: what a state store holds.

A record is the whole session, not only its tensor: model and version, the
state exactly as the slab holds it (dtype, shape, raw bytes, so a restore
is bit-identical), the step counter, the replay record (the last request
id, the counter before it, the cached reply) so an ``expected_step`` retry
stays exactly-once across a restart, the idle TTL and the wall-clock times.

Layout (little-endian)::

    magic  b"SQRC"     4 bytes
    version            u16   (FORMAT_VERSION)
    crc32 of payload   u32
    payload length     u64
    payload            u32 meta length, meta (UTF-8 JSON), then the arrays' bytes

The arrays' bytes follow the JSON in a fixed order (state, reply outputs,
reply state), each of the size its meta entry gives, so a 2 KiB state is not
inflated by base64 and decoding is one slice per array.

The checksum is zlib.crc32, not sha256: it guards against what a store
suffers (a torn or truncated write, a flipped bit, a file cut short by a
copy), for which a CRC is made, at several GB/s where sha256 is several
times slower over a 100,000-session snapshot. It is no defence against
someone who can write the store: they could recompute either.

Plain data and the standard library only: no torch, no grpc. Checking a
record against the model it would be restored into is ``check_fits``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from seqinfer.service.tenants import session_key

MAGIC = b"SQRC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHIQ")
_META_LEN = struct.Struct("<I")

# Bytes per element of the dtypes a state or a cached reply may have: the
# model dtypes by their torch name, the reply arrays by numpy's dtype.str.
ITEMSIZE = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "<f4": 4,
    "<f8": 8,
    "<f2": 2,
    "<i4": 4,
    "<i8": 8,
}


class RecordError(Exception):
    """A record that cannot be restored; the message names the session and why."""

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(f"session {session_id!r}: {reason}")
        self.session_id = session_id
        self.reason = reason


@dataclass(slots=True, frozen=True)
class ArrayRecord:
    """An array as raw bytes: dtype (see ITEMSIZE), shape, data."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(slots=True, frozen=True)
class ReplayRecord:
    """The last applied request that had a request id, and its reply."""

    request_id: str
    step_before: int  # the counter before it
    step: int  # the counter its reply reported
    outputs: ArrayRecord | None
    state: ArrayRecord | None
    created: bool
    closed: bool


@dataclass(slots=True, frozen=True)
class SessionRecord:
    session_id: str
    model: str
    model_version: str
    state: ArrayRecord  # [layers, hidden], dtype the model's (torch name)
    step: int
    idle_ttl: float
    created_at: float  # wall clock
    last_used: float  # wall clock
    replay: ReplayRecord | None = None
    tenant: str = ""  # whose session ("" without tokens)

    @property
    def model_key(self) -> str:
        return f"{self.model}:{self.model_version}"

    @property
    def key(self) -> str:
        """The store's key, the session table's: (tenant, id) as one string."""
        return session_key(self.tenant, self.session_id)

    def encode(self) -> bytes:
        blobs: list[bytes] = []
        meta = {
            "session_id": self.session_id,
            "tenant": self.tenant,
            "model": self.model,
            "model_version": self.model_version,
            "step": self.step,
            "idle_ttl": self.idle_ttl,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "state": _array_meta(self.state, blobs),
            "replay": None if self.replay is None else _replay_meta(self.replay, blobs),
        }
        head = json.dumps(meta, separators=(",", ":")).encode()
        payload = b"".join([_META_LEN.pack(len(head)), head, *blobs])
        crc = zlib.crc32(payload)
        return _HEADER.pack(MAGIC, FORMAT_VERSION, crc, len(payload)) + payload

    @staticmethod
    def decode(data: bytes, session_id: str = "?") -> SessionRecord:
        """The record in ``data``; RecordError if it is cut short, corrupt or unknown.

        ``session_id`` names the session in errors (the store's key), since
        a record that does not decode cannot say whose it is.
        """
        if len(data) < _HEADER.size:
            raise RecordError(session_id, f"truncated record ({len(data)} bytes, no header)")
        magic, version, crc, length = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise RecordError(session_id, "not a seqinfer session record (bad magic)")
        if version != FORMAT_VERSION:
            raise RecordError(
                session_id, f"unknown record format version {version} (this server reads "
                f"{FORMAT_VERSION})"
            )  # fmt: skip
        payload = memoryview(data)[_HEADER.size :]
        if len(payload) != length:
            raise RecordError(
                session_id, f"truncated record ({len(payload)} of {length} payload bytes)"
            )
        if zlib.crc32(payload) != crc:
            raise RecordError(session_id, "checksum mismatch (corrupt record)")
        try:
            record = _from_payload(payload)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # Checksummed yet unreadable: written by something that is not this format.
            raise RecordError(session_id, f"malformed record: {exc}") from exc
        if session_id != "?" and record.key != session_id:
            raise RecordError(session_id, f"record is of session {record.session_id!r}")
        return record


# Bytes of a record a lazy restore reads at start: the header and the meta
# (ids, model, counter, times) of any record whose ids are within their bounds.
HEAD_BYTES = 2048


def peek(head: bytes, session_id: str) -> bytes | None:
    """The meta (JSON bytes) of a record from its first bytes, for a lazy restore;
    None when they do not hold all of it (read the whole record). Unchecked: the
    checksum covers the whole record, and is checked when the session is restored."""
    if len(head) < _HEADER.size + _META_LEN.size:
        raise RecordError(session_id, f"truncated record ({len(head)} bytes, no header)")
    magic, version, _, _ = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise RecordError(session_id, "not a seqinfer session record (bad magic)")
    if version != FORMAT_VERSION:
        raise RecordError(session_id, f"unknown record format version {version}")
    (meta_len,) = _META_LEN.unpack_from(head, _HEADER.size)
    start = _HEADER.size + _META_LEN.size
    if start + meta_len > len(head):
        return None
    return head[start : start + meta_len]


def check_fits(
    record: SessionRecord, name: str, version: str, dtype: str, shape: tuple[int, ...]
) -> None:
    """RecordError unless the record is a session of this model, state dtype and shape."""
    if (record.model, record.model_version) != (name, version):
        raise RecordError(
            record.session_id,
            f"belongs to model {record.model_key}, not {name}:{version}",
        )
    if record.state.dtype != dtype:
        raise RecordError(
            record.session_id,
            f"state dtype {record.state.dtype} does not match model {name}:{version} ({dtype})",
        )
    if tuple(record.state.shape) != tuple(shape):
        raise RecordError(
            record.session_id,
            f"state shape {list(record.state.shape)} does not match model "
            f"{name}:{version} ({list(shape)})",
        )


# ------------------------------------------------------------- encoding --


def _array_meta(array: ArrayRecord | None, blobs: list[bytes]) -> dict[str, Any] | None:
    if array is None:
        return None
    blobs.append(array.data)
    return {"dtype": array.dtype, "shape": list(array.shape), "size": len(array.data)}


def _replay_meta(replay: ReplayRecord, blobs: list[bytes]) -> dict[str, Any]:
    return {
        "request_id": replay.request_id,
        "step_before": replay.step_before,
        "step": replay.step,
        "outputs": _array_meta(replay.outputs, blobs),
        "state": _array_meta(replay.state, blobs),
        "created": replay.created,
        "closed": replay.closed,
    }


# ------------------------------------------------------------- decoding --


class _Reader:
    def __init__(self, blobs: memoryview) -> None:
        self._blobs = blobs
        self._at = 0

    def array(self, meta: dict[str, Any] | None, what: str) -> ArrayRecord | None:
        if meta is None:
            return None
        dtype, shape, size = str(meta["dtype"]), tuple(int(d) for d in meta["shape"]), meta["size"]
        if dtype not in ITEMSIZE:
            raise ValueError(f"{what} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or math.prod(shape) * ITEMSIZE[dtype] != size:
            raise ValueError(f"{what}: {size} bytes do not hold shape {list(shape)} of {dtype}")
        if self._at + size > len(self._blobs):
            raise ValueError(f"{what} runs past the end of the record")
        data = bytes(self._blobs[self._at : self._at + size])
        self._at += size
        return ArrayRecord(dtype, shape, data)

    def finish(self) -> None:
        if self._at != len(self._blobs):
            raise ValueError(f"{len(self._blobs) - self._at} bytes left over after the arrays")


def _from_payload(payload: memoryview) -> SessionRecord:
    (head_len,) = _META_LEN.unpack_from(payload)
    start = _META_LEN.size
    meta = json.loads(bytes(payload[start : start + head_len]))
    reader = _Reader(payload[start + head_len :])
    state = reader.array(meta["state"], "state")
    if state is None:
        raise ValueError("no state")
    replay = None
    if meta["replay"] is not None:
        r = meta["replay"]
        replay = ReplayRecord(
            request_id=str(r["request_id"]),
            step_before=int(r["step_before"]),
            step=int(r["step"]),
            outputs=reader.array(r["outputs"], "reply outputs"),
            state=reader.array(r["state"], "reply state"),
            created=bool(r["created"]),
            closed=bool(r["closed"]),
        )
    reader.finish()
    return SessionRecord(
        session_id=str(meta["session_id"]),
        model=str(meta["model"]),
        model_version=str(meta["model_version"]),
        state=state,
        step=int(meta["step"]),
        idle_ttl=float(meta["idle_ttl"]),
        created_at=float(meta["created_at"]),
        last_used=float(meta["last_used"]),
        replay=replay,
        tenant=str(meta.get("tenant", "")),
    )
