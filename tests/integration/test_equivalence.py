"""Outputs and states over real gRPC equal torch.nn.GRU run over each whole sequence.

Many sessions of one model run interleaved through the three ways to step
(a stream, concurrent unary calls, StepMany), with every output mode, output
kind and input dtype, sessions that start from an initial state, and forks
and imports made between rounds; every reply is checked against nn.GRU over
the session's whole history. The run asserts that sessions really shared
batches, and a second test that one session's requests apply in the order
they were sent.

``SEQINFER_TEST_DEVICE=cuda`` serves the models on the GPU (the device
script does: slab on CUDA, CUDA graphs per batch bucket); skipped there when
no GPU is present.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from seqinfer.service.models.spec import LoadedModel
from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import (
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

DEVICE = os.environ.get("SEQINFER_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("SEQINFER_TEST_DEVICE=cuda but no GPU", allow_module_level=True)

SESSIONS = 64
FORKS = 8
IMPORTS = 8
OVERWRITES = 4
# name -> (model, dtype its inputs are sent in); each model has its own weights' seed.
MODELS: dict[str, tuple[LoadedModel, Any]] = {
    "dense-1": (make_model("dense", layers=1, name="dense-1", seed=101), np.float32),
    "dense-3-prob": (
        make_model("dense", layers=3, name="dense-3-prob", output_kind="probabilities", seed=102),
        np.float64,
    ),
    "dense-2-values": (
        make_model("dense", layers=2, name="dense-2-values", output_kind="values", seed=103),
        np.float16,
    ),
    "dense-2-hidden": (
        make_model("dense", layers=2, name="dense-2-hidden", output_kind="hidden", seed=104),
        np.float32,
    ),
    "tokens-1": (
        make_model("tokens", layers=1, name="tokens-1", input_size=30, seed=105),
        np.int32,
    ),
    "tokens-2-prob": (
        make_model(
            "tokens",
            layers=2,
            name="tokens-2-prob",
            input_size=30,
            output_kind="probabilities",
            seed=106,
        ),
        np.int64,
    ),
}
MODES = [pb.OUTPUT_MODE_ALL, pb.OUTPUT_MODE_LAST, pb.OUTPUT_MODE_NONE, pb.OUTPUT_MODE_UNSPECIFIED]


def _input_seed(name: str) -> int:
    """Independent per model (the old len(name) gave pairs of models the same inputs)."""
    return zlib.crc32(name.encode())


class BatchSizes(Observer):
    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = defaultdict(list)

    def batch_completed(self, model: str, requests: int, timesteps: int, seconds: float) -> None:
        self.sizes[model].append(requests)


@dataclass
class History:
    """What a session has been sent since its state was last set, and what to check."""

    h0: np.ndarray | None = None
    chunks: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    # (first row, end row, output mode, outputs or None, state or None) per reply
    replies: list[tuple[int, int, int, Any, Any]] = field(default_factory=list)

    def copy(self) -> History:
        return History(self.h0, list(self.chunks), self.rows)


class Driver:
    def __init__(self, stub: Any, name: str) -> None:
        self.stub = stub
        self.name = name
        self.model, self.dtype = MODELS[name]
        seed = _input_seed(name)
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.histories: dict[str, History] = {}

    def chunk(self, length: int) -> np.ndarray:
        spec = self.model.spec
        if spec.input_kind == "tokens":
            return self.rng.integers(0, spec.input_size, size=length).astype(self.dtype)
        return self.rng.standard_normal((length, spec.input_size)).astype(self.dtype)

    def state(self) -> np.ndarray:
        spec = self.model.spec
        return self.rng.standard_normal((spec.num_layers, spec.hidden_size)).astype(np.float32)

    def request(self, sid: str, *, start: bool = False) -> pb.StepRequest:
        history = self.histories[sid]
        x = self.chunk(self.pick.choice([1, 1, 1, 2, 3, 7, 17, 40]))
        mode = self.pick.choice(MODES)
        return_state = self.pick.random() < 0.25
        history.replies.append((history.rows, history.rows + len(x), mode, None, None))
        history.chunks.append(x)
        history.rows += len(x)
        return pb.StepRequest(
            session_id=sid,
            inputs=to_tensor(x),
            request_id=str(len(history.replies) - 1),
            start=start,
            model=self.name,
            output_mode=mode,
            return_state=return_state,
        )

    def record(self, response: pb.StepResponse) -> None:
        history = self.histories[response.session_id]
        first, end, mode, _, _ = history.replies[int(response.request_id)]
        outputs = from_tensor(response.outputs) if response.HasField("outputs") else None
        state = from_tensor(response.state) if response.HasField("state") else None
        history.replies[int(response.request_id)] = (first, end, mode, outputs, state)

    async def open_sessions(self) -> list[str]:
        """Half open with an initial state; the other half start with their first step."""
        sids = [f"{self.name}-{i}" for i in range(SESSIONS)]
        for sid in sids[::2]:
            h0 = self.state()
            await self.stub.OpenSession(
                pb.OpenSessionRequest(model=self.name, session_id=sid, initial_state=to_tensor(h0))
            )
            self.histories[sid] = History(h0)
        for sid in sids[1::2]:
            self.histories[sid] = History()
        return sids

    async def fork_and_import(self, sids: list[str]) -> None:
        for sid in sids[:FORKS]:
            new = f"{sid}-fork"
            await self.stub.ForkSession(pb.ForkSessionRequest(session_id=sid, new_session_id=new))
            self.histories[new] = self.histories[sid].copy()
        for sid in sids[FORKS : FORKS + IMPORTS]:
            export = await self.stub.ExportState(pb.ExportStateRequest(session_id=sid))
            self.check_state(sid, from_tensor(export.state))
            new = f"{sid}-import"
            info = await self.stub.ImportState(
                pb.ImportStateRequest(
                    session_id=new,
                    state=export.state,
                    create=True,
                    model=self.name,
                    step=export.session.step,
                )
            )
            assert info.step == export.session.step
            self.histories[new] = self.histories[sid].copy()
        for sid in sids[FORKS + IMPORTS : FORKS + IMPORTS + OVERWRITES]:
            state = self.state()
            await self.stub.ImportState(
                pb.ImportStateRequest(session_id=sid, state=to_tensor(state))
            )
            self.histories[sid] = History(state)

    def check_state(self, sid: str, got: np.ndarray) -> None:
        history = self.histories[sid]
        _, want = reference_run(self.model, np.concatenate(history.chunks), history.h0)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=sid)

    def check(self) -> None:
        # Hundreds of small reference runs: one thread is several times faster
        # than a team fighting the server's threads for two cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._check()
        finally:
            torch.set_num_threads(threads)

    def _check(self) -> None:
        for sid, history in self.histories.items():
            xs = np.concatenate(history.chunks)
            want_out, _ = reference_run(self.model, xs, history.h0)
            for first, end, mode, got, state in history.replies:
                where = f"{sid} rows {first}:{end}"
                if mode == pb.OUTPUT_MODE_NONE:
                    assert got is None, where
                elif mode == pb.OUTPUT_MODE_ALL:
                    np.testing.assert_allclose(got, want_out[first:end], atol=1e-5, rtol=0)
                else:
                    np.testing.assert_allclose(got, want_out[end - 1], atol=1e-5, rtol=0)
                if state is not None:
                    _, want_state = reference_run(self.model, xs[:end], history.h0)
                    np.testing.assert_allclose(state, want_state, atol=1e-5, rtol=0, err_msg=where)


async def _drive(address: str, name: str) -> int:
    """Runs the three rounds; returns how many sessions the last round stepped."""
    async with grpc.aio.insecure_channel(address) as channel:
        driver = Driver(pb_grpc.SeqinferStub(channel), name)
        sids = await driver.open_sessions()
        # Round 1: a stream carrying every session's steps interleaved.
        order = [sid for sid in sids for _ in range(3)]
        driver.pick.shuffle(order)
        seen: set[str] = set()
        requests = []
        for sid in order:
            start = sid not in seen and driver.histories[sid].h0 is None
            seen.add(sid)
            requests.append(driver.request(sid, start=start))
        async for result in driver.stub.StreamSteps(iter(requests)):
            assert result.WhichOneof("outcome") == "response", result.error
            driver.record(result.response)
        await driver.fork_and_import(sids)
        everyone = sorted(driver.histories)
        # Round 2: unary Step calls, many concurrently (different sessions).
        for response in await asyncio.gather(
            *(driver.stub.Step(driver.request(sid)) for sid in everyone)
        ):
            driver.record(response)
        # Round 3: StepMany with every session.
        many = await driver.stub.StepMany(
            pb.StepManyRequest(steps=[driver.request(sid) for sid in everyone])
        )
        for result in many.results:
            assert result.WhichOneof("outcome") == "response", result.error
            driver.record(result.response)
        for sid in everyone[:: len(everyone) // 5]:
            export = await driver.stub.ExportState(pb.ExportStateRequest(session_id=sid))
            driver.check_state(sid, from_tensor(export.state))
    driver.check()
    return len(everyone)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_interleaved_sessions_match_full_sequence_gru(name: str):
    sizes = BatchSizes()
    models = [model for model, _ in MODELS.values()]
    with running_server(models, observer=sizes, long_chunk_threshold=16, device=DEVICE) as server:
        stepped = asyncio.run(_drive(server.address, name))
    batches = sizes.sizes[f"{name}:1"]
    # StepMany submits all its items before the scheduler runs: one iteration
    # takes them all. A plan that mixes short steps and long chunks runs as two
    # engine calls (short first), so the iteration is one batch or two in a row.
    pairs = [a + b for a, b in itertools.pairwise(batches)]
    assert stepped in batches or stepped in pairs, batches
    assert sum(size > 1 for size in batches) > 1, batches


# --------------------------------------------------------- order of receipt --

ORDERED = make_model("dense", name="ordered", seed=107)


def test_one_sessions_requests_apply_in_the_order_sent():
    """Every request of one session is queued at once (the engine is held), then
    each chunk's outputs must equal nn.GRU's over exactly the chunks sent before
    it: a different order, or two at once, gives different numbers."""
    rng = np.random.default_rng(108)
    pick = random.Random(108)
    chunks = [rng.standard_normal((pick.randint(1, 5), 8)).astype(np.float32) for _ in range(40)]
    others = [f"other-{i}" for i in range(5)]
    requests = [pb.StepRequest(session_id="first", inputs=to_tensor(chunks[0][:1]))]
    for i, x in enumerate(chunks):
        requests.append(
            pb.StepRequest(
                session_id="ordered",
                inputs=to_tensor(x),
                request_id=str(i),
                output_mode=pb.OUTPUT_MODE_ALL,
            )
        )
        requests.append(pb.StepRequest(session_id=pick.choice(others), inputs=to_tensor(x[:1])))
    with running_server([ORDERED], device=DEVICE) as server, stub(server.address) as api:
        for sid in ("first", "ordered", *others):
            api.OpenSession(pb.OpenSessionRequest(model="ordered", session_id=sid))
        with gated(server) as gate:
            results = api.StreamSteps(iter(requests))
            gate.wait_entered(1)

            def queued() -> int:
                return int(server.run_sync(lambda: server.server.runtimes[0].scheduler.queue_depth))

            wait_until(lambda: queued() == len(requests) - gate.items, what="all queued")
            gate.open()
            ours = [r for r in results if r.session_id == "ordered"]
    assert [r.request_id for r in ours] == [str(i) for i in range(len(chunks))]
    want, _ = reference_run(ORDERED, np.concatenate(chunks))
    row = 0
    for x, result in zip(chunks, ours):
        assert result.WhichOneof("outcome") == "response", result.error
        np.testing.assert_allclose(
            from_tensor(result.response.outputs), want[row : row + len(x)], atol=1e-5, rtol=0
        )
        row += len(x)
        assert result.response.step == row
