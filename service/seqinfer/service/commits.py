"""Durability write-through: a batch's replies are sent only after its states are committed.

The scheduler computes a batch, reads the batch's new states in the same
worker call, and awaits ``WriteThrough.commit`` before it applies counters
and answers. ``commit`` turns the batch into records (the same records a
snapshot writes: state, counter, replay record; encoded by ``record_batch``,
which is on this path because it is three times faster) and commits them in one
transaction on the store's thread: one commit per batch (group commit), so
a 256-session batch costs one fsync, not 256.

Why the counters are applied only after the commit: a reply is the promise
that the step is kept, and a step whose commit failed must not look kept.
When the store fails, the batch's steps are still applied in memory (the
slab cannot be rolled back cheaply), the replies are withheld
(``StoreUnavailable``, retryable) and the sessions are marked
``uncommitted``: their replay record is not offered (``checks``) until a
later write holds their state, either their next batch's commit or the
periodic pass, which writes every session whose marker is behind. So no
caller is ever told of a step the store does not hold.

A session whose step ended it (``end``) is deleted in the same transaction.
"""

from __future__ import annotations

import logging
import time

import torch

from seqinfer.service.durability import Durability, Marker, Taken
from seqinfer.service.errors import StoreUnavailable
from seqinfer.service.models.spec import ModelSpec
from seqinfer.service.observer import Observer
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.record_batch import encode_batch
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import Session
from seqinfer.service.work import StepItem

log = logging.getLogger(__name__)


class WriteThrough:
    """Commits one model's batches through the server's ``Durability``."""

    def __init__(
        self, spec: ModelSpec, durability: Durability, observer: Observer, model_key: str
    ) -> None:
        self.spec = spec
        self.durability = durability
        self.observer = observer
        self.model_key = model_key
        # Keys whose applied state the store does not hold (a commit failed).
        self._uncommitted: set[str] = set()

    def uncommitted(self, session: Session) -> bool:
        return session.key in self._uncommitted

    def written(self, keys: list[str]) -> None:
        """The store now holds these keys' latest state (``Durability.on_written``)."""
        if self._uncommitted:
            self._uncommitted.difference_update(keys)

    async def commit(
        self,
        batch: list[StepItem],
        outcomes: list[StepOutcome],
        states: torch.Tensor,
        done: float,
    ) -> StoreUnavailable | dict[str, StoreUnavailable] | None:
        """Commit the batch's sessions as they will be once ``outcomes`` apply (at
        monotonic time ``done``); None when committed, else the refusal to send:
        one for the whole batch, or, when the store refused some sessions' writes
        as stale, one per session key refused."""
        taken, rows, deletes = self._taken(batch, outcomes, done)
        markers: dict[str, Marker] = {t.key: (t.step, done) for t in taken}
        try:
            chosen = states if len(rows) == len(batch) else states[rows]
            spec = self.spec
            # Encoded on the store's thread, right before its write: one hand-off.
            stale = await self.durability.submit_write(
                lambda: encode_batch(spec, taken, chosen), deletes, markers
            )
        except Exception as exc:
            # Any store failure: the replies must not go out as if kept.
            log.warning(
                "write-through commit of %d sessions of %s failed (%s: %s); replies withheld",
                len(batch),
                self.model_key,
                type(exc).__name__,
                exc,
            )
            self._uncommitted.update(t.key for t in taken)
            for _ in batch:
                self.observer.request_rejected(self.model_key, "store")
            return StoreUnavailable(
                "the state store could not commit this step; it may be applied: retry "
                "with the same expected_step and request_id"
            )
        self.written([t.key for t in taken])
        if not stale:
            return None
        # The store holds a newer revision of these sessions than this server
        # wrote (``revisions``): this step is applied here but not kept there.
        # Durability logged the keys; each step is refused and counted.
        self._uncommitted.update(stale)
        for _ in stale:
            self.observer.request_rejected(self.model_key, "stale")
        error = StoreUnavailable(
            "the state store holds a newer revision of this session than this server "
            "wrote (another writer); this step is applied here but not kept"
        )
        return dict.fromkeys(stale, error)

    @staticmethod
    def _taken(
        batch: list[StepItem], outcomes: list[StepOutcome], done: float
    ) -> tuple[list[Taken], list[int], list[str]]:
        now_wall = time.time() - (time.monotonic() - done)
        taken: list[Taken] = []
        rows: list[int] = []
        deletes: list[str] = []
        for row, (item, outcome) in enumerate(zip(batch, outcomes)):
            s = item.session
            if item.end or s.closed:
                deletes.append(s.key)
                continue
            if item.request_id:
                # The outcome itself, not a copy: the encoder only reads it, and
                # the scheduler keeps its own copy once the commit is done.
                replay = (item.request_id, s.step, outcome)
            elif s.last_reply is not None:
                replay = (s.last_request_id, s.last_step_before, s.last_reply)
            else:
                replay = None
            taken.append(
                Taken(
                    s.session_id,
                    s.tenant,
                    s.key,
                    outcome.step,
                    s.idle_ttl,
                    s.created_at,
                    done,
                    now_wall,
                    replay,
                )
            )
            rows.append(row)
        return taken, rows, deletes


def attach_write_through(
    durability: Durability, runtimes: list[ModelRuntime], observer: Observer
) -> None:
    """Give every model's scheduler a committer, before any step is accepted."""
    committers = []
    for runtime in runtimes:
        committer = WriteThrough(runtime.spec, durability, observer, runtime.key)
        runtime.scheduler.committer = committer
        committers.append(committer)

    def written(keys: list[str]) -> None:
        for committer in committers:
            committer.written(keys)

    durability.on_written = written
