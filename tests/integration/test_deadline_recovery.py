"""A deadline that passes while the step is in the engine: the handle recovers the outcome.

The gate holds the batch past the call's deadline, so the client sees
DEADLINE_EXCEEDED although the step applies once the gate opens. The
handle's ``recover()`` resends the same request (request_id and
expected_step): the server answers with the cached reply, ``replayed``.
A step whose deadline passed while it was still queued was dropped
unapplied; recovering it applies it now (``replayed`` false). Either way
the step applied exactly once and the handle's counter is the server's.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from seqinfer.client import AsyncClient, Client, DeadlineExceeded, RetryPolicy
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", name="late", seed=21)
DEADLINE = 1.0  # seconds; the gate holds the batch far longer (until opened)
NO_RETRY = RetryPolicy.disabled()


def _x(seed: int, t: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 8)).astype(np.float32)


def test_deadline_in_the_engine_then_recover_returns_the_cached_reply():
    first, late = _x(0, 2), _x(1, 3)
    # The default retry policy: the deadline is the whole call's, so no retry is left.
    with running_server([MODEL]) as server, Client(server.address) as client:
        session = client.open_session("late", "s")
        session.step(first)
        failure: list[BaseException] = []
        with gated(server) as gate:

            def call() -> None:
                try:
                    session.step(late, output_mode="all", timeout=DEADLINE)
                except BaseException as error:  # recorded, asserted below
                    failure.append(error)

            worker = threading.Thread(target=call)
            worker.start()
            gate.wait_entered(1)  # the step is in the engine...
            worker.join(60)  # ...and its deadline passes there
            assert len(failure) == 1 and isinstance(failure[0], DeadlineExceeded)
            assert session.unsettled and session.step_count == 2
            gate.open()
        out = session.recover()
        info = client.get_session("s")
    assert out.replayed and out.step == 5
    assert session.step_count == 5 and info.step == 5 and not session.unsettled
    want, _ = reference_run(MODEL, np.concatenate([first, late]))
    np.testing.assert_allclose(out.outputs, want[2:], atol=1e-5, rtol=0)


def _expired(server, session_id: str) -> bool:
    session = server.server.runtimes[0].table.by_id[session_id]
    item = session.pending[0]
    return item.future.done() or time.monotonic() >= item.deadline


def test_deadline_in_the_queue_then_recover_applies_it_once():
    x = _x(2, 1)
    with running_server([MODEL]) as server, Client(server.address, retry=NO_RETRY) as client:
        session = client.open_session("late", "q")
        with stub(server.address) as raw, gated(server) as gate:
            raw.OpenSession(pb.OpenSessionRequest(model="late", session_id="blocker"))
            blocker = raw.Step.future(
                pb.StepRequest(session_id="blocker", inputs=to_tensor(_x(3, 1)))
            )
            gate.wait_entered(1)  # the engine thread is held: "q" stays queued
            with pytest.raises(DeadlineExceeded):
                session.step(x, return_state=True, timeout=DEADLINE)
            assert session.unsettled
            # The server's own deadline may end a moment after the client's:
            # wait until the queued item is past it, so it is dropped unapplied.
            wait_until(lambda: server.run_sync(lambda: _expired(server, "q")), what="expiry")
            gate.open()
            blocker.result(60)
        out = session.recover()
        info = client.get_session("q")
    assert not out.replayed and out.step == 1
    assert session.step_count == 1 and info.step == 1
    _, want = reference_run(MODEL, x)
    np.testing.assert_allclose(out.state, want, atol=1e-5, rtol=0)


def test_next_step_forgets_an_unsettled_one_and_recover_without_one_is_an_error():
    with running_server([MODEL]) as server, Client(server.address, retry=NO_RETRY) as client:
        session = client.open_session("late", "n")
        with pytest.raises(RuntimeError, match="unknown outcome"):
            session.recover()
        assert session.step(_x(4, 2)).step == 2 and not session.unsettled


async def test_async_handle_recovers_a_step_applied_after_its_deadline():
    first, late = _x(5, 1), _x(6, 2)
    with running_server([MODEL]) as server:
        async with AsyncClient(server.address, retry=NO_RETRY) as client:
            session = await client.open_session("late", "a")
            await session.step(first)
            with gated(server) as gate:
                task = asyncio.ensure_future(session.step(late, timeout=DEADLINE))
                await asyncio.to_thread(gate.wait_entered, 1)
                with pytest.raises(DeadlineExceeded):
                    await task
                assert session.unsettled and session.step_count == 1
                gate.open()
            out = await session.recover()
            info = await client.get_session("a")
    assert out.replayed and out.step == 3 and session.step_count == 3 and info.step == 3
    want, _ = reference_run(MODEL, np.concatenate([first, late]))
    np.testing.assert_allclose(out.outputs, want[-1], atol=1e-5, rtol=0)
