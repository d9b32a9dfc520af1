"""The scheduler fed by hand, without gRPC: batching, ordering, expected_step, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from seqinfer.service.config import Settings
from seqinfer.service.engine import GRUEngine, OutputMode
from seqinfer.service.errors import DeadlineExceeded, QueueFull, StepGap
from seqinfer.service.observer import Observer
from seqinfer.service.scheduler import Scheduler
from seqinfer.service.sessions import SessionTable
from seqinfer.service.slab import StateSlab
from seqinfer.service.work import StepItem
from seqinfer.service.worker import SerialWorker
from tests.support import make_model, reference_run


class Recorder(Observer):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.rejected: list[str] = []

    def batch_completed(self, model, requests, timesteps, seconds):
        self.batches.append(requests)

    def request_rejected(self, model, reason):
        self.rejected.append(reason)


class Harness:
    """A scheduler wired as ``ModelRuntime`` wires it, with the server's default
    settings unless a test overrides one (so unit tests run production's mode)."""

    def __init__(self, **kw) -> None:
        self.model = make_model("dense")
        self.executor = SerialWorker("test-engine")
        engine = GRUEngine(self.model, torch.device("cpu"))
        self.slab = StateSlab(engine, initial_capacity=64, max_capacity=64)

        def release(slot: int) -> None:
            self.executor.submit(self.slab.write, slot, None)
            self.slab.release(slot)

        self.table = SessionTable(
            self.slab, release, max_sessions=64, eviction="reject", default_ttl=0.0
        )
        self.observer = Recorder()
        defaults = Settings()
        options = {
            "max_batch_size": 64,
            "max_batch_delay": 0.0,
            "max_queue_size": 1000,
            "max_queue_bytes": defaults.max_queue_bytes,
            "max_session_queue_size": defaults.max_session_queue_size,
            "max_session_queue_bytes": defaults.max_session_queue_bytes,
            "inline_max_timesteps": defaults.inline_max_timesteps,
        }
        options.update(kw)
        self.scheduler = Scheduler(
            "tiny:1",
            engine,
            self.slab,
            self.table,
            self.executor,
            observer=self.observer,
            on_session_closed=lambda s, r: self.table.remove(s),
            **options,
        )

    def item(self, session, x, **kw) -> StepItem:
        future = asyncio.get_running_loop().create_future()
        return StepItem(session, x, future, output_mode=OutputMode.ALL, **kw)


async def _until(predicate: Any, what: str, timeout: float = 60) -> None:
    """Yield to the scheduler until ``predicate`` holds; fail after a generous timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


@pytest.fixture
async def harness():
    h = Harness()
    h.scheduler.start()
    yield h
    await h.scheduler.drain()
    h.executor.shutdown()


async def test_pipelined_steps_of_one_session_apply_in_order_one_per_batch(harness):
    session = harness.table.create("a", None)[0]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(10)]
    items = [harness.item(session, x) for x in xs]
    for it in items:
        harness.scheduler.submit(it)
    outcomes = [await it.future for it in items]
    assert [o.step for o in outcomes] == list(range(1, 11))
    assert len(harness.observer.batches) == 10  # never two of one session in a batch
    want, state = reference_run(harness.model, np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate([o.outputs for o in outcomes]), want, atol=1e-5)
    np.testing.assert_allclose(harness.slab.tensor[:, session.slot], state, atol=1e-5)


@pytest.mark.parametrize("inline_max_timesteps", [0, 1])
async def test_many_sessions_share_a_batch(inline_max_timesteps: int):
    # With the server's default inline setting too: tiny steps submitted back
    # to back must still be batched, not each computed alone as it arrives.
    h = Harness(inline_max_timesteps=inline_max_timesteps)
    h.scheduler.start()
    sessions = [h.table.create(f"s{i}", None)[0] for i in range(20)]
    items = [h.item(s, np.ones((1, 8), np.float32)) for s in sessions]
    for it in items:
        h.scheduler.submit(it)
    await asyncio.gather(*(it.future for it in items))
    assert h.observer.batches == [20]
    await h.scheduler.drain()
    h.executor.shutdown()


async def test_expected_step_applies_replays_and_rejects_gaps(harness):
    session = harness.table.create("a", None)[0]
    x = np.ones((2, 8), np.float32)
    first = harness.item(session, x, request_id="r1", expected_step=0)
    harness.scheduler.submit(first)
    applied = await first.future
    assert applied.step == 2 and not applied.replayed
    retry = harness.item(session, x, request_id="r1", expected_step=0)
    harness.scheduler.submit(retry)
    replayed = await retry.future
    assert replayed.replayed and replayed.step == 2 and session.step == 2
    np.testing.assert_array_equal(replayed.outputs, applied.outputs)
    other_id = harness.item(session, x, request_id="r2", expected_step=0)
    harness.scheduler.submit(other_id)
    with pytest.raises(StepGap) as gap:
        await other_id.future
    assert gap.value.metadata["current_step"] == "2"
    assert session.step == 2


async def test_expired_deadline_and_cancelled_items_change_nothing(harness):
    session = harness.table.create("a", None)[0]
    late = harness.item(session, np.ones((1, 8), np.float32), deadline=time.monotonic() - 1)
    gone = harness.item(session, np.ones((1, 8), np.float32))
    gone.future.cancel()
    harness.scheduler.submit(late)
    harness.scheduler.submit(gone)
    with pytest.raises(DeadlineExceeded):
        await late.future
    await harness.scheduler.drain()
    assert session.step == 0
    assert torch.count_nonzero(harness.slab.tensor[:, session.slot]) == 0
    assert sorted(harness.observer.rejected) == ["cancelled", "deadline"]


async def test_queue_limit_rejects_with_queue_full():
    h = Harness(max_queue_size=2)  # loop not started: items stay queued
    session = h.table.create("a", None)[0]
    h.scheduler.submit(h.item(session, np.ones((1, 8), np.float32)))
    h.scheduler.submit(h.item(session, np.ones((1, 8), np.float32)))
    with pytest.raises(QueueFull):
        h.scheduler.submit(h.item(session, np.ones((1, 8), np.float32)))
    assert h.observer.rejected == ["backpressure"]
    h.executor.shutdown()


async def test_tiny_batches_run_inline_only_while_the_engine_thread_is_idle():
    h = Harness(inline_max_timesteps=1)
    h.scheduler.start()
    threads: list[str] = []
    compute = h.scheduler._compute

    def recording(items):
        threads.append(threading.current_thread().name)
        return compute(items)

    h.scheduler._compute = recording  # type: ignore[method-assign]
    session = h.table.create("a", None)[0]
    one = h.item(session, np.ones((1, 8), np.float32))
    h.scheduler.submit(one)
    await one.future
    two = h.item(session, np.ones((2, 8), np.float32))  # over the inline limit
    h.scheduler.submit(two)
    await two.future
    release = threading.Event()
    h.executor.submit(release.wait)  # the engine thread is busy with other slab work
    three = h.item(session, np.ones((1, 8), np.float32))
    h.scheduler.submit(three)
    # An inline run sets and clears in_flight without yielding to this test:
    # seeing it set means the batch is waiting for the worker.
    await _until(lambda: h.scheduler.in_flight == 1, "the batch to go to the engine thread")
    assert not three.future.done()  # it queued behind that work instead of running inline
    release.set()
    await three.future
    main = threading.current_thread().name
    assert threads[0] == main and threads[1] != main and threads[2] != main
    assert session.step == 4
    await h.scheduler.drain()
    h.executor.shutdown()


async def test_batch_delay_gathers_late_arrivals_and_ends_when_the_batch_is_full():
    # A window far longer than the test: only a full batch can end it early.
    h = Harness(max_batch_delay=60.0, max_batch_size=3)
    h.scheduler.start()
    sessions = [h.table.create(f"s{i}", None)[0] for i in range(3)]
    items = [h.item(s, np.ones((1, 8), np.float32)) for s in sessions]
    started = time.monotonic()
    h.scheduler.submit(items[0])
    # submit() sets the wake-up event; the scheduler clears it only once it is
    # waiting inside the window, with items[0] already taken as ready.
    await _until(lambda: not h.scheduler._wakeup.is_set(), "the batch window to open")
    h.scheduler.submit(items[1])
    h.scheduler.submit(items[2])
    await asyncio.gather(*(it.future for it in items))
    assert h.observer.batches == [3]
    assert time.monotonic() - started < 30, "the full batch did not end the window"
    await h.scheduler.drain()
    h.executor.shutdown()
