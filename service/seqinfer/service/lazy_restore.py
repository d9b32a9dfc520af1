"""Lazy restore (setting ``restore: lazy``): sessions known from the store at start,
their states read on first use.

At start it reads each record's first ``records.HEAD_BYTES`` (the header and
the meta: ids, model, counter, TTL, times), not the states, and registers
every session in the store tier of its model (``tiering``); a session's first
use then restores it through the tiering path, which reads the whole record
and checks its checksum. A header that does not parse, or a model, dtype or
shape not served here, is refused at start, by name, as an eager restore
refuses it. The meta is decoded with msgspec: ``json.loads`` was a third of
the time of a 100,000-session start.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from seqinfer.service.durability import Durability
from seqinfer.service.errors import SeqinferError
from seqinfer.service.records import HEAD_BYTES, RecordError, peek
from seqinfer.service.tenants import session_key
from seqinfer.service.tiering import Tiering

log = logging.getLogger(__name__)


class _State(msgspec.Struct):
    dtype: str
    shape: list[int]


class Meta(msgspec.Struct):
    """What a lazy start needs of a record's meta (the rest, such as the replay
    record, is skipped by the decoder)."""

    session_id: str
    model: str
    model_version: str
    step: int
    idle_ttl: float
    created_at: float
    last_used: float
    state: _State
    tenant: str = ""


_DECODER = msgspec.json.Decoder(Meta)


def _meta(head: bytes, key: str) -> Meta:
    """A record's meta from its header bytes; LookupError when they do not hold it."""
    raw = peek(head, key)
    if raw is None:
        raise LookupError(key)
    try:
        meta = _DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise RecordError(key, f"malformed record: {exc}") from exc
    if session_key(meta.tenant, meta.session_id) != key:
        raise RecordError(key, f"record is of session {meta.session_id!r}")
    return meta


async def lazy_restore(durability: Durability, tierings: list[Tiering]) -> tuple[int, int]:
    """Register every stored session in the store tier from its record's header;
    returns (known, refused). The states are read on each session's first use."""
    started = time.monotonic()
    store = durability.store
    read_heads = getattr(store, "read_heads", None)

    def heads() -> list[tuple[str, bytes]]:
        if read_heads is not None:
            return list(read_heads(HEAD_BYTES))
        return [(key, data[:HEAD_BYTES]) for key, data in store.read_all()]

    rows = await asyncio.to_thread(heads)
    fits: dict[str, tuple[Tiering, str, list[int]]] = {}
    for t in tierings:
        spec = t.runtime.spec
        fits[t.runtime.key] = (t, spec.dtype, [spec.num_layers, spec.hidden_size])
    metas: list[Meta] = []
    refused: list[RecordError] = []
    for key, head in rows:
        try:
            try:
                meta = _meta(head, key)
            except LookupError:  # ids longer than the head: read this one whole
                meta = _meta((await durability.read([key])).get(key, b""), key)
            metas.append(meta)
        except (RecordError, LookupError) as bad:
            refused.append(bad if isinstance(bad, RecordError) else RecordError(key, "truncated"))
    metas.sort(key=lambda m: m.last_used)  # the table's LRU order is theirs
    known = 0
    clocks = (time.time(), time.monotonic())
    for meta in metas:
        sid = meta.session_id
        model = f"{meta.model}:{meta.model_version}"
        try:
            fit = fits.get(model)
            if fit is None:
                raise RecordError(sid, f"model {model} is not served here")
            tiering, dtype, shape = fit
            if meta.state.dtype != dtype:
                raise RecordError(
                    sid, f"state dtype {meta.state.dtype} does not match model {model} ({dtype})"
                )
            if meta.state.shape != shape:
                raise RecordError(
                    sid, f"state shape {meta.state.shape} does not match model {model} ({shape})"
                )
            tiering.add_in_store(
                sid, meta.tenant, meta.step, meta.idle_ttl, meta.created_at, meta.last_used, clocks
            )
            known += 1
        except SeqinferError as exc:  # its id taken
            refused.append(RecordError(sid, str(exc)))
        except RecordError as bad:
            refused.append(bad)
    for error in refused:
        log.warning("session not restored: %s", error)
    log.info(
        "restored %d sessions lazily (headers read, states on first use) in %.3f s, refused %d",
        known,
        time.monotonic() - started,
        len(refused),
    )
    return known, len(refused)
