"""What the scheduler queues: one admitted step, and where its reply goes.

A step's reply goes either to its own future (Step, StreamSteps) or into
its place in a ``BatchSink`` (StepMany), which resolves one future when the
last of its steps is answered: a 256-step message then costs one future,
not 256. ``answer``/``refuse`` deliver exactly once; ``abandoned`` tells the
scheduler that nobody waits any more (the call was cancelled), so a queued
step is dropped unapplied.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from seqinfer.service.engine import EngineItem, EngineResult, OutputMode
from seqinfer.service.errors import SeqinferError
from seqinfer.service.protocol import (
    StepBatch,
    StepBatchReply,
    StepOutcome,
    StepReply,
    TensorData,
)
from seqinfer.service.sessions import Session


class BatchSink:
    """Collects the replies of one StepBatch; ``future`` gets them all at once."""

    __slots__ = ("batch", "future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[StepBatchReply], batch: StepBatch) -> None:
        self.future = future
        self.batch = batch
        self.replies: list[StepReply | None] = [None] * len(batch)
        self.remaining = len(batch)

    def batch_tensor(self, index: int) -> TensorData:
        batch = self.batch
        return TensorData(batch.dtypes[index], batch.shapes[index], batch.data[index])

    def deliver(self, index: int, reply: StepReply) -> None:
        if self.replies[index] is not None:
            return
        self.replies[index] = reply
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(StepBatchReply(self.replies))  # type: ignore[arg-type]


@dataclass(slots=True, eq=False)
class StepItem:
    """One admitted step request, waiting in its session's queue."""

    session: Session
    inputs: np.ndarray
    # Where the reply goes: ``future``, or place ``index`` of ``sink``.
    future: asyncio.Future[StepOutcome] | None
    request_id: str = ""
    expected_step: int | None = None
    reset: bool = False
    end: bool = False
    output_mode: OutputMode = OutputMode.LAST
    return_state: bool = False
    deadline: float | None = None  # time.monotonic() seconds
    created: bool = False
    # Upper bound of the reply, from ``replies.result_bytes`` (computed once,
    # for the size check); a stream counts it against its unsent bytes.
    reply_bytes: int = 0
    sink: BatchSink | None = None
    index: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)
    timesteps: int = field(init=False)
    nbytes: int = field(init=False)  # of the inputs: a view of the request's bytes

    def __post_init__(self) -> None:
        self.timesteps = int(self.inputs.shape[0])
        self.nbytes = int(self.inputs.nbytes)

    def abandoned(self) -> bool:
        """Nobody waits for the reply any more: the call was cancelled."""
        if self.sink is not None:
            return self.sink.future.done()
        return self.future is not None and self.future.done()

    def answer(self, outcome: StepOutcome) -> None:
        if self.sink is not None:
            self.sink.deliver(self.index, outcome)
        elif self.future is not None and not self.future.done():
            self.future.set_result(outcome)

    def refuse(self, error: SeqinferError) -> None:
        if self.sink is not None:
            self.sink.deliver(self.index, error)
        elif self.future is not None and not self.future.done():
            self.future.set_exception(error)


def engine_items(batch: list[StepItem]) -> list[EngineItem]:
    """What the compute needs of each item: its slot, inputs and options."""
    return [
        EngineItem(it.session.slot, it.inputs, it.reset, it.output_mode, it.return_state)
        for it in batch
    ]


def step_outcomes(batch: list[StepItem], results: list[EngineResult]) -> list[StepOutcome]:
    """Each item's reply, with the counter it takes its session to (not yet applied)."""
    return [
        StepOutcome(
            item.session.session_id,
            item.request_id,
            (0 if item.reset else item.session.step) + item.timesteps,
            result.outputs,
            result.state,
            item.created,
            item.end,
        )
        for item, result in zip(batch, results)
    ]
