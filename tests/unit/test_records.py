"""Session records: a round trip is exact, and every kind of bad record is refused by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from seqinfer.service.records import (
    FORMAT_VERSION,
    ArrayRecord,
    RecordError,
    ReplayRecord,
    SessionRecord,
    check_fits,
)

STATE = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def _record(replay: bool = True) -> SessionRecord:
    outputs = np.arange(6, dtype=np.float32).reshape(2, 3)
    return SessionRecord(
        session_id="s-1",
        model="bench-gru",
        model_version="1",
        state=ArrayRecord("float32", (2, 8), STATE.tobytes()),
        step=17,
        idle_ttl=60.0,
        created_at=1_700_000_000.25,
        last_used=1_700_000_100.5,
        replay=ReplayRecord(
            request_id="r-9",
            step_before=15,
            step=17,
            outputs=ArrayRecord("<f4", (2, 3), outputs.tobytes()),
            state=None,
            created=False,
            closed=False,
        )
        if replay
        else None,
    )


@pytest.mark.parametrize("replay", [True, False])
def test_round_trip_is_exact(replay: bool):
    record = _record(replay)
    back = SessionRecord.decode(record.encode(), "s-1")
    assert back == record
    assert np.array_equal(np.frombuffer(back.state.data, np.float32).reshape(2, 8), STATE)


def test_truncated_record_is_refused_by_name():
    data = _record().encode()
    for cut in (3, 10, len(data) - 1):
        with pytest.raises(RecordError, match=r"session 's-1': truncated"):
            SessionRecord.decode(data[:cut], "s-1")


def test_bad_checksum_is_refused():
    data = bytearray(_record().encode())
    data[-5] ^= 0x01  # one bit of the state
    with pytest.raises(RecordError, match=r"'s-1'.*checksum"):
        SessionRecord.decode(bytes(data), "s-1")


def test_unknown_version_and_bad_magic_are_refused():
    data = bytearray(_record().encode())
    struct.pack_into("<H", data, 4, FORMAT_VERSION + 1)
    with pytest.raises(RecordError, match="unknown record format version"):
        SessionRecord.decode(bytes(data), "s-1")
    with pytest.raises(RecordError, match="bad magic"):
        SessionRecord.decode(b"XXXX" + bytes(data[4:]), "s-1")


def test_checksummed_but_malformed_payload_is_refused():
    payload = struct.pack("<I", 2) + b"{}"
    data = struct.pack("<4sHIQ", b"SQRC", FORMAT_VERSION, zlib.crc32(payload), len(payload))
    with pytest.raises(RecordError, match="malformed"):
        SessionRecord.decode(data + payload, "s-1")


def test_a_record_under_another_sessions_key_is_refused():
    with pytest.raises(RecordError, match="record is of session 's-1'"):
        SessionRecord.decode(_record().encode(), "other")


def test_check_fits_names_model_dtype_and_shape():
    record = _record()
    check_fits(record, "bench-gru", "1", "float32", (2, 8))
    with pytest.raises(RecordError, match=r"'s-1'.*belongs to model bench-gru:1, not x:1"):
        check_fits(record, "x", "1", "float32", (2, 8))
    with pytest.raises(RecordError, match="dtype float32 does not match"):
        check_fits(record, "bench-gru", "1", "float16", (2, 8))
    with pytest.raises(RecordError, match=r"shape \[2, 8\] does not match"):
        check_fits(record, "bench-gru", "1", "float32", (2, 16))


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and backslash \\', "tab\tnewline\n\x00\x1f", "ünï😀cödé", ""],
)
def test_the_hand_written_meta_is_the_json_json_dumps_would_write(text: str):
    import dataclasses
    import json

    base = _record()
    assert base.replay is not None
    record = dataclasses.replace(
        base,
        session_id=f"s{text}",
        tenant=text,
        model_version=text or "1",
        idle_ttl=float("inf") if text == "" else 0.1 + 0.2,
        replay=dataclasses.replace(base.replay, request_id=text, created=True),
    )
    data = record.encode()
    assert SessionRecord.decode(data) == record
    (head_len,) = struct.unpack_from("<I", data, struct.calcsize("<4sHIQ"))
    start = struct.calcsize("<4sHIQ") + 4
    meta = json.loads(data[start : start + head_len])
    assert meta["session_id"] == record.session_id and meta["tenant"] == text
    assert meta["replay"]["request_id"] == text and meta["replay"]["created"] is True
    assert meta["idle_ttl"] == record.idle_ttl
    assert meta["state"] == {"dtype": "float32", "shape": [2, 8], "size": STATE.nbytes}
