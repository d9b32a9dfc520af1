"""The state store on Redis: the same interface as SQLite's, for servers that share one.

Why a script: a write-through batch must land whole, and a write carrying
an older revision than the one held must never overwrite it (a late
snapshot chunk racing a newer commit). Redis runs one Lua script with
nothing interleaved, so one EVALSHA per ``write`` call does the
compare-and-set for every key of the batch and the deletes together, in one
round trip. A write larger than ``CHUNK_KEYS`` records or ``CHUNK_BYTES``
(a full snapshot of many sessions) is sent as several scripts, each whole:
one giant script would make Redis buffer hundreds of MiB and stall every
other client while it runs. Each session's record still lands whole, and
the compare-and-set keeps it from going back; only a reader in the middle
of such a snapshot sees some sessions newer than others. Everything that
could make a script fail half-way (types, a generator raising) is checked
in Python before anything is sent.

Key layout: one hash per session, ``<prefix><session key>`` with fields
``rev`` (decimal revision) and ``record`` (the ``records`` bytes). The
prefix lets several deployments share a Redis. ``read_all`` walks the
prefix with SCAN, so it never blocks Redis the way KEYS would.

A lost connection raises ``StoreUnavailable`` (store.py), which callers map
to UNAVAILABLE; redis-py reconnects on the next call, and re-loads the
script when a restarted Redis has forgotten it (NOSCRIPT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import TypeVar

import redis

from seqinfer.service.store import StoreUnavailable, StoreWrite

DEFAULT_PREFIX = "seqinfer:session:"
_READ_CHUNK = 1000
# The most keys and record bytes one script carries: a write-through batch
# (max_batch_size sessions of a few KiB) is one script; a snapshot of every
# session is as many as it takes.
CHUNK_KEYS = 1024
CHUNK_BYTES = 8 << 20

# KEYS: the n written keys, then the deleted ones. ARGV[1] = n; ARGV[2] = per
# written key "<revision>:<record length>," ('' revision = unconditional, keeps
# the held revision); ARGV[3] = the records back to back. One argument for all
# records, not two per key: redis-py packs and sends each argument on its own
# (about half of a 256-session write's time went there). Returns the written
# keys refused as stale.
_CAS = """
local n = tonumber(ARGV[1])
local records = ARGV[3]
local stale = {}
local at = 1
local i = 0
for rev, size in string.gmatch(ARGV[2], '([^:,]*):(%d+),') do
  i = i + 1
  local key = KEYS[i]
  local rec = string.sub(records, at, at + tonumber(size) - 1)
  at = at + tonumber(size)
  if rev == '' then
    redis.call('HSET', key, 'record', rec)
    redis.call('HSETNX', key, 'rev', '0')
  else
    local held = redis.call('HGET', key, 'rev')
    if held and tonumber(held) > tonumber(rev) then
      stale[#stale + 1] = key
    else
      redis.call('HSET', key, 'rev', rev, 'record', rec)
    end
  end
end
for j = n + 1, #KEYS do
  redis.call('DEL', KEYS[j])
end
return stale
"""

# The record of each of KEYS (false where none): a read of many in one command.
_READ = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGET', KEYS[i], 'record')
end
return out
"""

T = TypeVar("T")


class RedisStore:
    """Session records in Redis at ``url``, under ``prefix``."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, timeout: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._cas = self._client.register_script(_CAS)
        self._read_script = self._client.register_script(_READ)
        # Fail at start-up, not on the first snapshot: a server that cannot
        # reach its store must not serve sessions it could never keep.
        self._call(self._client.ping)

    def _call(self, do: Callable[[], T]) -> T:
        try:
            return do()
        except (redis.ConnectionError, redis.TimeoutError) as lost:
            raise StoreUnavailable(f"redis at {self.url}: {lost}") from lost

    def write(
        self,
        records: Iterable[tuple[str, bytes] | StoreWrite],
        deletes: Iterable[str] = (),
    ) -> list[str]:
        """Write and delete in one script; returns the keys refused as stale.

        ``StoreWrite`` entries are compared-and-set on their revision; plain
        ``(key, record)`` pairs overwrite whatever is held.
        """
        chunks: list[tuple[list[str], list[str], list[bytes | bytearray | memoryview]]]
        chunks = [([], [], [])]
        size = 0
        for entry in records:  # materialised first: a raising generator sends nothing
            if isinstance(entry, StoreWrite):
                key, revision, record = entry.key, str(int(entry.revision)), entry.record
            else:
                key, record = entry
                revision = ""
            if not isinstance(record, bytes | bytearray | memoryview):
                raise TypeError(f"record for {key} is {type(record).__name__}, not bytes")
            length = memoryview(record).nbytes
            keys, metas, blobs = chunks[-1]
            if keys and (len(keys) >= CHUNK_KEYS or size + length > CHUNK_BYTES):
                keys, metas, blobs = [], [], []
                chunks.append((keys, metas, blobs))
                size = 0
            keys.append(self.prefix + key)
            metas.append(f"{revision}:{length},")
            blobs.append(record)
            size += length
        dropped = [self.prefix + key for key in deletes]
        stale: list[str] = []
        cut = len(self.prefix)
        # One script per chunk, so that 100,000 sessions are not one command of
        # hundreds of MiB that Redis must buffer whole and runs with everything
        # else waiting. The deletes go with the last chunk.
        for index, (keys, metas, blobs) in enumerate(chunks):
            gone = dropped if index == len(chunks) - 1 else []
            for at in range(0, max(len(gone), 1), CHUNK_KEYS):
                part = gone[at : at + CHUNK_KEYS]
                if not keys and not part:
                    continue
                args: list[int | str | bytes] = [len(keys), "".join(metas), b"".join(blobs)]
                refused = self._call(partial(self._cas, keys=keys + part, args=args))
                stale.extend(bytes(key).decode()[cut:] for key in refused)
                keys, metas, blobs = [], [], []
        return stale

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The records held for ``keys``; keys not held are left out."""
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            # One script per chunk, not a pipeline of one HGET each: redis-py
            # spends ~90 µs of Python per pipelined command, 9 s of a
            # 100,000-session restore; one command of 1,000 keys is a few ms.
            named = [self.prefix + key for key in chunk]
            records = self._call(partial(self._read_script, keys=named))
            for key, record in zip(chunk, records, strict=True):
                if isinstance(record, bytes):
                    found[key] = record
        return found

    def revisions(self, keys: Sequence[str]) -> dict[str, int]:
        """The revision held for each of ``keys`` that is held."""
        held: dict[str, int] = {}
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for key in chunk:
                pipe.hget(self.prefix + key, "rev")
            revs = self._call(pipe.execute)
            held.update((k, int(r)) for k, r in zip(chunk, revs, strict=True) if r is not None)
        return held

    def _keys(self) -> list[str]:
        cut = len(self.prefix)
        pattern = _glob_escape(self.prefix) + "*"
        return [
            bytes(key).decode()[cut:]
            for key in self._call(
                lambda: list(self._client.scan_iter(match=pattern, count=_READ_CHUNK))
            )
        ]

    def read_all(self) -> Iterator[tuple[str, bytes]]:
        # Keys first, then records: a key deleted in between is simply left out.
        yield from self.read(self._keys()).items()

    def delete(self, session_ids: Iterable[str]) -> None:
        self.write((), session_ids)

    def close(self) -> None:
        self._client.close()


def _glob_escape(text: str) -> str:
    """SCAN MATCH is a glob: a prefix holding ``*?[]\\`` must match only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
