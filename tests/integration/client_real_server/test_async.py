"""The asyncio client and its stream on the real server, outputs checked against torch."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from seqinfer.client import AsyncClient, SessionNotFound
from tests.integration.client_real_server.served import BENCH, frames, outputs
from tests.support import reference_run


async def test_async_client_and_stream(server: Any) -> None:
    async with AsyncClient(server.address, timeout=30) as c:
        assert "bench-gru" in {m.name for m in await c.list_models()}
        x = frames(4)
        want, _ = reference_run(BENCH, x)
        async with c.session("bench-gru") as s:
            out = await s.step(x[:2], output_mode="all")
            np.testing.assert_allclose(outputs(out), want[:2], atol=1e-5, rtol=0)
            async with c.stream() as stream:
                results = [await stream.submit(s, x[t]) for t in (2, 3)]
                outs = await asyncio.gather(*results)
            np.testing.assert_allclose(outputs(outs[-1]), want[3], atol=1e-5, rtol=0)
            assert s.step_count == 4
        with pytest.raises(SessionNotFound):
            await c.get_session(s.session_id)
