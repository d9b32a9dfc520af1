"""Snapshot mode: every model's sessions written to a state store, and restored on start.

Three moments (``server`` calls them): ``restore`` before the server serves,
eagerly, every record (with tiers, the most recent ``device_sessions`` onto
the device and the rest left in the store; ``restore: lazy`` is
``tiering.lazy_restore`` instead); ``start``, a periodic snapshot every
``snapshot_interval_seconds`` of the sessions changed since the last one;
``close`` after the drain, a snapshot of every session, so a clean SIGTERM
loses nothing and a crash loses at most one interval of steps.

A snapshot is consistent per session: it takes, in one turn of the event
loop, sessions with nothing in the engine (``busy`` false), their counters
and replay records, and queues the read of their states on the model's
worker (``ModelRuntime.submit_read``). Any later batch of theirs queues
behind that read, so each state matches the counter written with it. A
busy session is skipped; it has changed, so the next snapshot takes it.
Which sessions changed is known from what was written: the counter and the
last use per session id (a reset can leave the counter where it was, never
the last use). Sessions gone since (closed, expired, evicted) are deleted in
the same transaction, so they do not come back.

Encoding, decoding and the store's I/O run in threads: 100,000 sessions
must not stall the event loop that serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from seqinfer.service.models.spec import ModelSpec
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.record_batch import encode_batch
from seqinfer.service.records import (
    ArrayRecord,
    RecordError,
    SessionRecord,
    check_fits,
)
from seqinfer.service.revisions import RevisionClock
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import Session
from seqinfer.service.store import StateStore, StoreWrite

if TYPE_CHECKING:
    from seqinfer.service.tiering import Tiering

log = logging.getLogger(__name__)
# Sessions per worker read: small enough that a batch queued meanwhile waits
# for one gather of a few MiB, not for the whole snapshot.
CHUNK = 4096

Marker = tuple[int, float]  # (step, last_used): what was written of a session


class Taken(NamedTuple):
    """A session's bookkeeping as it was when its state read was queued."""

    session_id: str
    tenant: str
    key: str  # the table's and the store's: tenants.session_key
    step: int
    idle_ttl: float
    created_at: float
    last_used: float  # monotonic
    last_used_wall: float
    replay: tuple[str, int, StepOutcome] | None


class Durability:
    def __init__(
        self,
        store: StateStore,
        runtimes: list[ModelRuntime],
        interval: float,
        write_through: bool = False,
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.interval = interval
        # Write-through: batches commit their own sessions (``commits``); the
        # periodic pass then only catches what no step wrote (fork, import,
        # sessions gone) and must never put back an older state than a commit's.
        self.write_through = write_through
        self._written: dict[str, Marker] = {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Every store write goes through this one thread, in submission order:
        # a write submitted later is committed later, so a commit's newer state
        # is never overwritten by a snapshot chunk submitted before it.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.on_written: Callable[[list[str]], None] | None = None
        # Every write is compare-and-set on a stamp of this clock (``revisions``).
        self.revisions = RevisionClock()
        self.refused = 0  # writes the store refused as stale, since start
        # Models with tiers (``tiering``), by model key: an eager restore puts on
        # the device only what its slab bound holds, the rest stays in the store.
        self.tierings: dict[str, Tiering] = {}

    def read(self, keys: list[str]) -> asyncio.Future[dict[str, bytes]]:
        """The records of ``keys``, read on the store thread: after every write
        submitted before (a spill's), so a read never sees an older record."""
        return asyncio.get_running_loop().run_in_executor(self._io, self.store.read, keys)

    def remember(self, key: str, marker: Marker | None) -> None:
        """Say what the store holds of ``key`` (a session known from the store
        without a write of ours), or None to forget it: a session forgotten is
        not deleted from the store when it leaves the table."""
        if marker is None:
            self._written.pop(key, None)
        else:
            self._written[key] = marker

    def submit_write(
        self,
        records: list[tuple[str, bytes]] | Callable[[], list[tuple[str, bytes]]],
        deletes: list[str],
        markers: dict[str, Marker],
        revisions: dict[str, int] | None = None,
    ) -> asyncio.Future[list[str]]:
        """Queue one transaction on the store thread; once it is committed the
        markers say what the store holds (the caller awaits the future, which
        gets the keys the store refused as stale).

        ``records`` may be a function that makes them, run on the store thread
        first: a commit then costs one thread hand-off, not two. Every record
        is written compare-and-set (``revisions``): with the revision given per
        key (a snapshot stamps a chunk when it takes it), else one stamped now,
        which is right for states that can change no more before they are
        written (a committing batch's sessions are busy).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[str]] = loop.create_future()
        stamp = self.revisions.next()

        def write() -> tuple[list[str], list[str]]:
            made = records() if callable(records) else records
            held = revisions or {}
            stale = self.store.write(
                [StoreWrite(key, held.get(key, stamp), data) for key, data in made], deletes
            )
            return [key for key, _ in made], list(stale or ())

        def committed(result: asyncio.Future[tuple[list[str], list[str]]]) -> None:
            error = result.exception()
            if error is not None:
                if not done.done():
                    done.set_exception(error)
                return
            made, stale = result.result()
            for key in deletes:
                self._written.pop(key, None)
            written = made
            if stale:
                # A newer revision is held: another writer (a server sharing the
                # store) or this server's clock set back. Not marked written, so
                # a later pass tries again.
                self.refused += len(stale)
                log.warning(
                    "store refused %d of %d writes as stale (it holds a newer revision): %s",
                    len(stale),
                    len(made),
                    ", ".join(repr(key) for key in stale[:5]) + (" ..." if len(stale) > 5 else ""),
                )
                refused = set(stale)
                written = [key for key in made if key not in refused]
            self._written.update((key, markers[key]) for key in written if key in markers)
            if self.on_written is not None:
                self.on_written(written)
            if not done.done():
                done.set_result(stale)

        loop.run_in_executor(self._io, write).add_done_callback(committed)
        return done

    # ------------------------------------------------------------ restore --

    async def restore(self) -> tuple[int, int]:
        """Every record back into its model; returns (restored, refused)."""
        started = time.monotonic()
        rows = await asyncio.to_thread(lambda: list(self.store.read_all()))
        records, errors = await asyncio.to_thread(_decode_all, rows)
        by_key = {runtime.key: runtime for runtime in self.runtimes}
        groups: dict[str, list[SessionRecord]] = defaultdict(list)
        for record in records:
            runtime = by_key.get(record.model_key)
            try:
                if runtime is None:
                    raise RecordError(
                        record.session_id, f"model {record.model_key} is not served here"
                    )
                spec = runtime.spec
                shape = (spec.num_layers, spec.hidden_size)
                check_fits(record, spec.name, spec.version, spec.dtype, shape)
            except RecordError as unfit:
                errors.append(unfit)
                continue
            groups[record.model_key].append(record)
        restored = 0
        for key, group in groups.items():
            runtime = by_key[key]
            group.sort(key=lambda r: r.last_used)
            tiering = self.tierings.get(key)
            if tiering is not None:
                # The most recently used go to the device, the others stay in the store.
                cut = max(0, len(group) - tiering.device_room())
                for record in group[:cut]:
                    tiering.add_record(record)
                restored += cut
                group = group[cut:]
            states, replies = await asyncio.to_thread(_to_tensors, runtime.spec, group)
            made, refused = await runtime.restore_sessions(group, states, replies)
            errors.extend(RecordError(sid, why) for sid, why in refused)
            for session in made:
                self._written[session.key] = (session.step, session.last_used)
            restored += len(made)
        for error in errors:
            log.warning("session not restored: %s", error)
        log.info(
            "restored %d sessions in %.3f s, refused %d",
            restored,
            time.monotonic() - started,
            len(errors),
        )
        return restored, len(errors)

    # ----------------------------------------------------------- snapshot --

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._every_interval(), name="snapshots"
            )

    async def _every_interval(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            try:
                await self.snapshot(full=False)
            except Exception:
                # The markers were not advanced: the next snapshot writes these again.
                log.exception("snapshot failed; the next one retries")

    async def close(self, final: bool) -> None:
        """Stop the periodic snapshots (after the one in progress), write every
        session if ``final``, close the store."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        try:
            if final:
                # Write-through: every step is in the store already; what is left
                # is what no step wrote (forks, imports, sessions gone).
                await self.snapshot(full=not self.write_through)
        finally:
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.close)
            self._io.shutdown()

    async def snapshot(self, full: bool) -> int:
        """Write the changed sessions (every one if ``full``) and delete the gone;
        returns how many were written."""
        async with self._lock:
            started = time.monotonic()
            records: list[tuple[str, bytes]] = []
            markers: dict[str, Marker] = {}
            revisions: dict[str, int] = {}
            for runtime in self.runtimes:
                sessions = list(runtime.table.by_id.values())
                for at in range(0, len(sessions), CHUNK):
                    # Stamped as taken: a commit of a later step is stamped later.
                    stamp = self.revisions.next()
                    taken, slots = self._take(sessions[at : at + CHUNK], full)
                    if not taken:
                        continue
                    revisions.update((t.key, stamp) for t in taken)
                    states = await asyncio.wrap_future(runtime.submit_read(slots))
                    encoded = await asyncio.to_thread(encode_batch, runtime.spec, taken, states)
                    records.extend(encoded)
                    markers.update((t.key, (t.step, t.last_used)) for t in taken)
            live: dict[str, Session] = {}
            for runtime in self.runtimes:
                live.update(runtime.table.by_id)
            # Closed while the snapshot ran: not written, and deleted if written before.
            records = [(sid, data) for sid, data in records if sid in live]
            if self.write_through:
                # Stepped since taken: its batch's commit holds a newer state.
                records = [
                    (sid, data)
                    for sid, data in records
                    if (live[sid].step, live[sid].last_used) == markers[sid]
                ]
            deletes = [sid for sid in self._written.keys() | markers.keys() if sid not in live]
            if records or deletes:
                await self.submit_write(records, deletes, markers, revisions)
            level = logging.INFO if records or deletes or full else logging.DEBUG
            log.log(
                level,
                "snapshot%s: wrote %d sessions, deleted %d in %.3f s",
                " (all)" if full else "",
                len(records),
                len(deletes),
                time.monotonic() - started,
            )
            return len(records)

    def _take(self, sessions: list[Session], full: bool) -> tuple[list[Taken], list[int]]:
        """Idle sessions that changed (or all), with what is written of them; the
        caller queues their read before the loop runs anything else."""
        now_wall, now = time.time(), time.monotonic()
        written = self._written
        taken, slots = [], []
        for s in sessions:
            if s.closed or s.busy or s.slot < 0:  # in the store tier: written when spilled
                continue
            if not full and written.get(s.key) == (s.step, s.last_used):
                continue
            replay = None
            if s.last_reply is not None:
                replay = (s.last_request_id, s.last_step_before, s.last_reply)
            taken.append(
                Taken(
                    s.session_id,
                    s.tenant,
                    s.key,
                    s.step,
                    s.idle_ttl,
                    s.created_at,
                    s.last_used,
                    now_wall - (now - s.last_used),
                    replay,
                )
            )
            slots.append(s.slot)
        return taken, slots


# ------------------------------------------------- conversions (threads) --


def _decode_all(rows: list[tuple[str, bytes]]) -> tuple[list[SessionRecord], list[RecordError]]:
    records, errors = [], []
    for session_id, data in rows:
        try:
            records.append(SessionRecord.decode(data, session_id))
        except RecordError as bad:
            errors.append(bad)
    return records, errors


def _numpy(array: ArrayRecord | None) -> np.ndarray | None:
    if array is None:
        return None
    return np.frombuffer(array.data, dtype=np.dtype(array.dtype)).reshape(array.shape)


def _to_tensors(
    spec: ModelSpec, records: list[SessionRecord]
) -> tuple[torch.Tensor, list[StepOutcome | None]]:
    """The records' states as one ``[n, layers, hidden]`` tensor, and their cached replies."""
    joined = bytearray(b"".join(r.state.data for r in records))
    states = torch.frombuffer(joined, dtype=spec.torch_dtype) if joined else torch.empty(0)
    states = states.view(len(records), spec.num_layers, spec.hidden_size)
    replies: list[StepOutcome | None] = []
    for r in records:
        p = r.replay
        replies.append(
            None
            if p is None
            else StepOutcome(
                r.session_id,
                p.request_id,
                p.step,
                _numpy(p.outputs),
                _numpy(p.state),
                p.created,
                p.closed,
            )
        )
    return states, replies
