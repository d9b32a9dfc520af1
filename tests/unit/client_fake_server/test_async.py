"""The asyncio client mirrors the sync one: calls, retries, step_many, streams and reconnects."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from seqinfer.client import AsyncClient, ModelNotFound, StepGap
from tests.unit.client_fake_server.fake_seqinfer import FAST_RETRY, FakeSeqinfer, X


async def test_async_client_mirrors_sync(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    async with AsyncClient(address, retry=FAST_RETRY, timeout=10) as c:
        (model,) = await c.list_models()
        assert model.name == "toy"
        with pytest.raises(ModelNotFound):
            await c.get_model("nope")
        servicer.fail("Step", grpc.StatusCode.UNAVAILABLE, after_apply=True)
        async with c.session("toy") as s:
            out = await s.step(X)
            assert out.replayed and s.step_count == 1
            np.testing.assert_array_equal(await s([1.0, 1.0, 1.0]), [2.0, 2.0, 2.0])
            f = await s.fork()
            assert f.step_count == 2
            state, _ = await c.export_state(f.session_id)
            assert state.tolist() == [[2.0]]
        assert s.session_id not in servicer.sessions
        a, b = await c.open_session("toy"), await c.open_session("toy")
        ra, rb = await c.step_many([(a, X), (b, np.ones((2, 3)))])
        assert (ra.step, rb.step) == (1, 2)  # type: ignore[union-attr]
        assert (a.step_count, b.step_count) == (1, 2)
        with pytest.raises(StepGap):
            await c.step(a.session_id, X, expected_step=5)


async def test_async_stream_many_tasks_and_reconnect(fake: tuple[FakeSeqinfer, str]) -> None:
    servicer, address = fake
    servicer.script.stream_breaks = [7]
    async with AsyncClient(address, retry=FAST_RETRY, timeout=10) as c:
        sessions = [await c.open_session("toy") for _ in range(4)]
        async with c.stream() as stream:

            async def drive(s) -> list[int]:  # type: ignore[no-untyped-def]
                return [(await stream.step(s, X)).step for _ in range(6)]

            steps = await asyncio.gather(*(drive(s) for s in sessions))
            pipelined = [await stream.submit(sessions[0], X) for _ in range(5)]
            outs = await asyncio.gather(*pipelined)
        assert steps == [list(range(1, 7))] * 4
        assert [o.step for o in outs] == list(range(7, 12))
    assert servicer.applied == 4 * 6 + 5
    assert servicer.stream_calls == 2
