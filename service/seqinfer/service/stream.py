"""One StreamSteps call: a reader task queues steps, results go out as they finish.

Results of one session leave in request order: a request answered at once
(e.g. invalid) waits behind that session's earlier requests on this stream.
A frame that could not be decoded (``wire.Undecodable``) gets one error
result and the stream goes on.

Flow control, not buffering: the reader stops reading while the stream's
unsent replies (requests read and not yet written back, counted with their
request and reply bytes) are at ``max_stream_unsent[_bytes]``. A client
that sends without reading then meets HTTP/2 flow control on its own
writes instead of growing the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from seqinfer.service import convert
from seqinfer.service.config import Settings
from seqinfer.service.engine_client import EngineClient
from seqinfer.service.errors import SeqinferError
from seqinfer.service.protocol import StepOutcome
from seqinfer.service.results import ResultBuilder
from seqinfer.service.wire import Undecodable
from seqinfer.v1 import seqinfer_pb2 as pb


class StepStream:
    def __init__(
        self,
        engine: EngineClient,
        results: ResultBuilder,
        settings: Settings,
        deadline: float | None,
        tenant: str = "",
    ) -> None:
        self.engine = engine
        self.tenant = tenant
        self.builder = results
        self.deadline = deadline
        self.results: asyncio.Queue[tuple[pb.StepResult, int] | None] = asyncio.Queue()
        # Per session: a future done once its latest request's result is emitted
        # or queued to be (see _track).
        self.latest: dict[str, asyncio.Future[Any]] = {}
        self.outstanding: set[asyncio.Future[StepOutcome]] = set()
        self.reading = True
        self.max_unsent = settings.max_stream_unsent
        self.max_unsent_bytes = settings.max_stream_unsent_bytes
        self.unsent = 0
        self.unsent_bytes = 0
        self.room = asyncio.Event()
        self.room.set()

    async def run(self, requests: AsyncIterator[pb.StepRequest]) -> AsyncIterator[pb.StepResult]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                entry = await self.results.get()
                if entry is None:
                    break
                yield entry[0]
                # Written (gRPC's write returned): the reply has left this stream's books.
                self._sent(entry[1])
            await reader  # surfaces a reader failure
        finally:
            reader.cancel()
            for future in self.outstanding:
                future.cancel()  # queued steps are dropped unapplied

    def _sent(self, cost: int) -> None:
        self.unsent -= 1
        self.unsent_bytes -= cost
        if self.unsent < self.max_unsent and self.unsent_bytes < self.max_unsent_bytes:
            self.room.set()

    async def _read(self, requests: AsyncIterator[pb.StepRequest]) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        try:
            async for request in requests:
                try:
                    if type(request) is Undecodable:
                        raise request.error()
                    command = convert.step_from_pb(request, self.deadline, self.tenant)
                    admitted = engine.try_step(command) or await engine.step(command)
                    future = admitted.future
                    cost = admitted.held_bytes
                except SeqinferError as error:
                    future = loop.create_future()
                    future.set_exception(error)
                    # The request stays referenced until its error result goes out.
                    cost = request.ByteSize()
                self._track(request, future, cost)
                if self.unsent >= self.max_unsent or self.unsent_bytes >= self.max_unsent_bytes:
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.reading = False
            if not self.outstanding:
                self.results.put_nowait(None)

    def _track(
        self, request: pb.StepRequest, future: asyncio.Future[StepOutcome], cost: int
    ) -> None:
        self.outstanding.add(future)
        self.unsent += 1
        self.unsent_bytes += cost
        key = request.session_id
        # Each request's result waits for the session's previous one to be
        # emitted: an answer that comes early (an invalid item, refused at once
        # here or, through a front end, by the engine's first reply) must not
        # overtake the session's earlier item still computing.
        before = self.latest.get(key)
        # With nothing of the session's unemitted before it (the usual case), the
        # request's own future serves: its emit was added before any later
        # request's emit is chained on that future, so it runs first. Only a
        # request that may be held back by an earlier one needs its own marker.
        emitted: asyncio.Future[Any] = (
            future if before is None else future.get_loop().create_future()
        )
        self.latest[key] = emitted

        def emit(_: object) -> None:
            if before is not None and not before.done():
                before.add_done_callback(emit)
                return
            self.outstanding.discard(future)
            if self.latest.get(key) is emitted:
                del self.latest[key]
            if emitted is not future:
                emitted.set_result(None)
            if future.cancelled():
                self._sent(cost)
                return
            self.results.put_nowait((self.builder.step_result(request, future), cost))
            if not self.reading and not self.outstanding:
                self.results.put_nowait(None)

        future.add_done_callback(emit)
