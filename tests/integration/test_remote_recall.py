"""The front end's engine client against the real engine host, on one loop.

A cancelled call through a front end recalls its step: a step still queued in the
engine is dropped unapplied, exactly as a cancelled call in one process.

Front end (``RemoteEngine``) and engine host (``EngineHost``) run on one
event loop here, over a real ZeroMQ ``ipc://`` socket, so the engine's
batches can be held by an ``EngineGate``: the first step computes behind
the gate, the second waits in its session's queue, and its caller cancels.
Had the recall not reached the engine, the second step would be applied
and the third, sent with the counter the client knows, would get STEP_GAP.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np

from seqinfer.service.engine_process import EngineHost
from seqinfer.service.models.builtin import bench_gru, pydoc_chars
from seqinfer.service.protocol import StepCommand, StepOutcome, TensorData
from seqinfer.service.remote_engine import RemoteEngine
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import gated, running_server, wait_until

MODEL = bench_gru()
T = 2


def _command(k: int) -> StepCommand:
    x = np.random.default_rng(k).standard_normal((T, MODEL.spec.input_size)).astype("<f4")
    return StepCommand(
        session_id="x",
        request_id=f"x-{k}",
        inputs=TensorData(pb.DTYPE_FLOAT32, list(x.shape), x.tobytes()),
        model="bench-gru",
        start=k == 0,
        expected_step=k * T,
    )


def test_a_cancelled_queued_step_is_recalled_and_never_applied(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "engine.sock")
    with running_server([MODEL]) as server:
        engine = server.server.engine
        assert engine is not None

        async def connect() -> tuple[EngineHost, RemoteEngine, asyncio.Task[None]]:
            host = EngineHost(engine, socket_path)
            serving = asyncio.get_running_loop().create_task(host.serve())
            remote = RemoteEngine(socket_path)
            await remote.start()
            return host, remote, serving

        host, remote, serving = server.call(connect())
        runtime = server.server.runtimes[0]
        with gated(server) as gate:

            async def send(k: int) -> asyncio.Future[StepOutcome]:
                return remote.try_step(_command(k)).future

            first = server.call(send(0))
            gate.wait_entered(1)
            second = server.call(send(1))
            wait_until(
                lambda: server.run_sync(lambda: runtime.scheduler.queue_depth) == 1,
                what="the second step queued in the engine",
            )
            assert server.run_sync(lambda: len(host._admitted)) == 2
            server.run_sync(second.cancel)
            wait_until(
                lambda: server.run_sync(lambda: len(host._admitted) == 1),
                what="the recall to reach the engine",
            )
            gate.open()

        async def finish() -> tuple[StepOutcome, StepOutcome]:
            done = await asyncio.wait_for(first, 60)
            third = await asyncio.wait_for(remote.try_step(_command(1)).future, 60)
            return done, third

        done, third = server.call(finish())
        assert done.step == T
        # Sent with expected_step = T: applied, so the cancelled step was not.
        assert third.step == 2 * T and not third.replayed

        async def close() -> None:
            await remote.shutdown()
            serving.cancel()
            host.close()

        server.call(close())


def test_a_front_ends_held_bytes_never_fall_below_the_engines_exact_figure(
    tmp_path: Path,
) -> None:
    """A stream's memory bound counts held bytes; across processes they are an estimate."""
    socket_path = str(tmp_path / "engine.sock")
    chars = pydoc_chars()
    with running_server([MODEL, chars]) as server:
        engine = server.server.engine
        assert engine is not None

        async def compare() -> list[tuple[int, int]]:
            host = EngineHost(engine, socket_path)
            serving = asyncio.get_running_loop().create_task(host.serve())
            remote = RemoteEngine(socket_path)
            await remote.start()
            pairs = []
            n = 0
            for model, x in (
                ("bench-gru", np.zeros((7, MODEL.spec.input_size), "<f4")),
                ("pydoc-chars", np.zeros(7, "<i4")),
            ):
                dtype = pb.DTYPE_FLOAT32 if x.dtype.kind == "f" else pb.DTYPE_INT32
                for mode in (pb.OUTPUT_MODE_LAST, pb.OUTPUT_MODE_ALL, pb.OUTPUT_MODE_NONE):
                    for state in (False, True):
                        n += 1
                        command = StepCommand(
                            session_id=f"{model}-{n}",
                            request_id=f"r{n}",
                            inputs=TensorData(dtype, list(x.shape), x.tobytes()),
                            model=model,
                            start=True,
                            output_mode=mode,
                            return_state=state,
                        )
                        exact = await engine.step(command)
                        await exact.future
                        estimate = remote.try_step(replace(command, session_id=f"{model}+{n}"))
                        await estimate.future
                        pairs.append((estimate.held_bytes, exact.held_bytes))
            await remote.shutdown()
            serving.cancel()
            host.close()
            return pairs

        pairs = server.call(compare())
    assert all(estimate >= exact for estimate, exact in pairs), pairs
    # A token model's ALL outputs (vocabulary-wide rows) dwarf its int32 inputs:
    # an input-based guess would fall far short there.
    assert max(exact for _, exact in pairs) > 20 * 7 * 4
