"""A batch of session records of one model, encoded in one pass: the bytes ``records`` writes.

Why a second encoder: in write-through every batch's reply waits for its
records, so their encoding is on the step's latency. ``SessionRecord.encode``
builds each record's metadata as nested dicts and runs ``json.dumps`` over
them, about 27 µs a session: 7 ms for a 256-session StepMany message, half of
what the message costs without durability. The sessions of one batch share
their model, dtype and shapes, so here the metadata is one format string
per batch with only each session's own fields filled in (strings escaped by
the json module's own C escaper, numbers as ``json`` writes them), and the
bytes come out identical to ``SessionRecord.encode`` (format version 1,
``records``), which ``tests/unit/test_record_batch.py`` checks field by field
against it. Decoding stays in ``records``: one format, one reader.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from json.encoder import encode_basestring_ascii as _string
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqinfer.service.models.spec import ModelSpec
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.records import FORMAT_VERSION, MAGIC

if TYPE_CHECKING:
    from seqinfer.service.durability import Taken

_HEADER = struct.Struct("<4sHIQ")
_META_LEN = struct.Struct("<I")


def _number(value: Any) -> str:
    """``json.dumps(value)`` for an int or float, without its dispatch."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)


# An array's meta by (dtype, shape): a batch's cached replies share theirs, so
# it is built once, not once per session (about a third of the encoding).
_ARRAY_META: dict[tuple[str, tuple[int, ...]], str] = {}


def _array_meta(value: np.ndarray | None, blobs: list[bytes]) -> str:
    if value is None:
        return "null"
    data = value.tobytes()  # C order whatever the strides: ascontiguousarray's bytes
    blobs.append(data)
    key = (value.dtype.str, value.shape)
    meta = _ARRAY_META.get(key)
    if meta is None:
        shape = ",".join(str(int(n)) for n in value.shape)
        meta = f'{{"dtype":{_string(value.dtype.str)},"shape":[{shape}],"size":{len(data)}}}'
        if len(_ARRAY_META) < 256:  # bounded: shapes come from requests
            _ARRAY_META[key] = meta
    return meta


def _replay_meta(replay: tuple[str, int, StepOutcome] | None, blobs: list[bytes]) -> str:
    if replay is None:
        return "null"
    request_id, before, reply = replay
    outputs = _array_meta(reply.outputs, blobs)
    state = _array_meta(reply.state, blobs)
    return (
        f'{{"request_id":{_string(request_id)},"step_before":{_number(before)},'
        f'"step":{_number(reply.step)},"outputs":{outputs},"state":{state},'
        f'"created":{"true" if reply.created else "false"},'
        f'"closed":{"true" if reply.closed else "false"}}}'
    )


def encode_batch(
    spec: ModelSpec, taken: list[Taken], states: torch.Tensor
) -> list[tuple[str, bytes]]:
    """``(key, record bytes)`` of each ``durability.Taken`` with its row of ``states``."""
    raw = states.view(torch.uint8).numpy() if states.numel() else None
    state_size = 0 if raw is None else raw[0].nbytes
    # Everything the batch shares, escaped once.
    model = f'"model":{_string(spec.name)},"model_version":{_string(spec.version)}'
    state_meta = (
        f'"state":{{"dtype":{_string(spec.dtype)},'
        f'"shape":[{spec.num_layers},{spec.hidden_size}],"size":{state_size}}}'
    )
    out = []
    for i, t in enumerate(taken):
        blobs: list[bytes] = [b"" if raw is None else raw[i].tobytes()]
        replay = _replay_meta(t.replay, blobs)
        head = (
            f'{{"session_id":{_string(t.session_id)},"tenant":{_string(t.tenant)},{model},'
            f'"step":{_number(t.step)},"idle_ttl":{_number(t.idle_ttl)},'
            f'"created_at":{_number(t.created_at)},"last_used":{_number(t.last_used_wall)},'
            f'{state_meta},"replay":{replay}}}'
        ).encode()
        payload = b"".join([_META_LEN.pack(len(head)), head, *blobs])
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, zlib.crc32(payload), len(payload))
        out.append((t.key, header + payload))
    return out
