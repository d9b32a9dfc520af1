"""The batch encoder writes exactly the bytes ``SessionRecord.encode`` writes.

Write-through encodes with ``record_batch.encode_batch`` (fast), snapshots
and the reader go through ``records`` (the format's definition): a byte
difference would be a second format. Compared over the fields' awkward
cases: non-ASCII and quote-bearing ids and tenants, no replay, a replay with
a state and with neither array, created/closed flags, an integer, a zero and
an infinite TTL, large counters.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from seqinfer.service.durability import Taken
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.record_batch import encode_batch
from seqinfer.service.records import ArrayRecord, ReplayRecord, SessionRecord
from seqinfer.service.tenants import session_key

SPEC = bench_gru().spec


def _taken() -> list[Taken]:
    rng = np.random.default_rng(0)
    out = rng.random((1, SPEC.output_size or 8), dtype=np.float32)
    state = rng.random((SPEC.num_layers, SPEC.hidden_size), dtype=np.float32)
    replies: list[tuple[str, int, StepOutcome] | None] = [
        None,
        ("r-1", 4, StepOutcome("a", "r-1", 5, out)),
        ('r"\\2é', 0, StepOutcome("b", 'r"\\2é', 3, out, state, created=True)),
        ("r3", 7, StepOutcome("c", "r3", 9, None, None, closed=True)),
    ]
    ids = ["plain", 'quo"te\\back', "ünï/côdé ✓", "tab\tnew\nline"]
    tenants = ["", "acme", "ténant", ""]
    ttls: list[float] = [600.0, 0.0, math.inf, 30]  # type: ignore[list-item]
    taken = []
    for i, (sid, tenant, ttl, reply) in enumerate(zip(ids, tenants, ttls, replies)):
        taken.append(
            Taken(
                sid,
                tenant,
                session_key(tenant, sid),
                (2**40 + i) if i == 2 else i * 3,
                ttl,
                1_700_000_000.123456 + i,
                12.5,
                1_700_000_100.987654321 + i,
                reply,
            )
        )
    return taken


def _one_by_one(taken: list[Taken], states: torch.Tensor) -> list[tuple[str, bytes]]:
    """The reference: each session through ``SessionRecord.encode``."""
    raw = states.contiguous().view(torch.uint8).numpy()
    shape = (SPEC.num_layers, SPEC.hidden_size)
    out = []
    for i, t in enumerate(taken):
        replay = None
        if t.replay is not None:
            request_id, before, reply = t.replay
            arrays = [
                None if a is None else ArrayRecord(a.dtype.str, a.shape, a.tobytes())
                for a in (reply.outputs, reply.state)
            ]
            replay = ReplayRecord(
                request_id, before, reply.step, arrays[0], arrays[1], reply.created, reply.closed
            )
        record = SessionRecord(
            t.session_id, SPEC.name, SPEC.version, ArrayRecord(SPEC.dtype, shape, raw[i].tobytes()),
            t.step, t.idle_ttl, t.created_at, t.last_used_wall, replay, t.tenant,
        )  # fmt: skip
        out.append((t.key, record.encode()))
    return out


def test_batch_encoding_is_byte_identical_to_the_record_encoder():
    taken = _taken()
    states = torch.randn(len(taken), SPEC.num_layers, SPEC.hidden_size)
    fast = encode_batch(SPEC, taken, states)
    slow = _one_by_one(taken, states)
    assert [key for key, _ in fast] == [key for key, _ in slow]
    for (key, got), (_, want) in zip(fast, slow):
        assert got == want, key
        # And the reader takes it back: the state row is this session's.
        record = SessionRecord.decode(got, key)
        assert record.key == key


def test_each_record_carries_its_own_row_of_the_batch_states():
    taken = _taken()
    states = torch.randn(len(taken), SPEC.num_layers, SPEC.hidden_size)
    for i, (key, data) in enumerate(encode_batch(SPEC, taken, states)):
        record = SessionRecord.decode(data, key)
        got = np.frombuffer(record.state.data, dtype="<f4").reshape(SPEC.num_layers, -1)
        np.testing.assert_array_equal(got, states[i].numpy())
