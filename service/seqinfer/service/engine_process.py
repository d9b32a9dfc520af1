"""The engine process of ``seqinfer serve --frontends K``: the only owner of sessions and slabs.

It runs the engine side alone (``SeqinferServer.start_engine``: models,
runtimes, ``LocalEngine``, metrics) and answers the front ends' envelopes
(``ipc``) on a ROUTER socket. Steps go through ``LocalEngine.try_step``
exactly as in the single-process server, so ordering, exactly-once and
every bound hold across front ends; one stream may carry many sessions and
any front end serves any session. Replies finished in one loop turn leave
in one message per front end. The front ends' gRPC counters arrive as
snapshots and are exported here, labelled by front end. SIGHUP (forwarded
by the supervisor) re-reads the token file for the tenants' quotas and
model lists; the front ends re-read it for the tokens themselves.

SIGTERM drains (the supervisor sends it after the front ends have stopped):
accepted work finishes within ``shutdown_grace_seconds``, then the process
exits 0, or 1 if steps were left unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from seqinfer.service import ipc
from seqinfer.service.config import Settings
from seqinfer.service.engine_client import Admitted, LocalEngine
from seqinfer.service.errors import SeqinferError, internal
from seqinfer.service.heap import freeze_startup_heap
from seqinfer.service.protocol import StepCommand
from seqinfer.service.security import reload_token_table, token_table
from seqinfer.service.server import SeqinferServer

if TYPE_CHECKING:
    from seqinfer.service.metrics import PrometheusObserver

log = logging.getLogger(__name__)
READY = "seqinfer-engine: ready"


class EngineHost:
    def __init__(
        self, engine: LocalEngine, socket_path: str, observer: PrometheusObserver | None = None
    ) -> None:
        """``observer``: where the front ends' metrics snapshots go (None: metrics are off)."""
        self.engine = engine
        self._observer = observer
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(f"ipc://{socket_path}")
        self._outbox: defaultdict[bytes, list[tuple[int, Any]]] = defaultdict(list)
        # Steps admitted and not yet answered, by (front end, seq): what a
        # front end's ``cancel`` message recalls.
        self._admitted: dict[tuple[bytes, int], asyncio.Future[Any]] = {}
        # Per front end, the steps waiting behind one whose session needs the slab
        # to grow first (``_step``); absent when none waits.
        self._backlog: dict[bytes, deque[tuple[int, StepCommand]]] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self) -> None:
        while True:
            identity, payload = await self._socket.recv_multipart()
            message = ipc.decode(payload)
            if message[0] == "steps":
                for seq, command in message[1]:
                    self._step(identity, seq, command)
            elif message[0] == "cancel":
                for seq in message[1]:
                    self._recall(identity, seq)
            elif message[0] == "metrics":
                self._frontend_metrics(message[1], message[2], message[3])
            else:
                _, seq, method, args = message
                task = asyncio.get_running_loop().create_task(
                    self._call(identity, seq, method, args)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _frontend_metrics(self, frontend: object, snapshot: object, tenants: object) -> None:
        """Keep a front end's latest counters for the exporter; never answered."""
        if self._observer is None:
            return
        from seqinfer.service.metrics.frontends import methods_from, tenants_from

        try:
            methods = methods_from(snapshot)
            by_tenant = tenants_from(tenants)
        except (ValueError, TypeError) as error:
            log.warning("metrics: front end %s sent a bad snapshot: %s", frontend, error)
            return
        if not self._observer.set_frontend(str(frontend), methods, by_tenant):
            log.warning("metrics: too many front ends; front end %s not exported", frontend)

    def close(self) -> None:
        self._socket.close(0)
        self._context.term()

    def _step(self, identity: bytes, seq: int, command: StepCommand) -> None:
        backlog = self._backlog.get(identity)
        if backlog is not None:
            # An earlier step of this front end waits for the slab to grow: this
            # one may be its session's next (a stream's start, then its steps),
            # so it waits behind it, as a stream's reader waits in one process.
            backlog.append((seq, command))
            return
        try:
            admitted = self.engine.try_step(command)
        except SeqinferError as error:
            self._reply(identity, seq, error)
            return
        if admitted is None:  # its new session waits for the slab to grow
            self._backlog[identity] = deque([(seq, command)])
            task = asyncio.get_running_loop().create_task(self._admit_backlog(identity))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._answer_when_done(identity, seq, admitted)

    async def _admit_backlog(self, identity: bytes) -> None:
        """Admit a front end's waiting steps in arrival order, growing the slab as needed."""
        backlog = self._backlog[identity]
        while backlog:
            seq, command = backlog.popleft()
            try:
                admitted = self.engine.try_step(command) or await self.engine.step(command)
            except SeqinferError as error:
                self._reply(identity, seq, error)
                continue
            self._answer_when_done(identity, seq, admitted)
        del self._backlog[identity]  # no await since the loop's last check: nothing new came

    def _answer_when_done(self, identity: bytes, seq: int, admitted: Admitted) -> None:
        key = (identity, seq)
        self._admitted[key] = admitted.future

        def done(future: asyncio.Future[Any]) -> None:
            self._admitted.pop(key, None)
            if future.cancelled():  # recalled: the front end waits for nothing
                return
            error = future.exception()
            self._reply(identity, seq, future.result() if error is None else error)

        admitted.future.add_done_callback(done)

    def _recall(self, identity: bytes, seq: int) -> None:
        """A front end's caller cancelled: a step still queued is dropped unapplied
        (the scheduler sees its future done, as for a cancelled call in one process);
        one already computing is applied. Unknown seqs (answered already) are ignored."""
        future = self._admitted.pop((identity, seq), None)
        if future is not None and not future.done():
            future.cancel()
            return
        backlog = self._backlog.get(identity)
        if backlog is not None:  # not admitted yet: it never will be
            kept = [entry for entry in backlog if entry[0] != seq]
            backlog.clear()
            backlog.extend(kept)

    async def _call(self, identity: bytes, seq: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in ipc.CALLS:
                raise ValueError(f"unknown engine method {method!r}")
            reply: Any = await getattr(self.engine, method)(*args)
        except SeqinferError as error:
            reply = error
        except Exception as exc:  # ours: logged here, the caller gets INTERNAL
            log.exception("engine command %s failed", method)
            reply = internal(exc)
        self._reply(identity, seq, reply)

    def _reply(self, identity: bytes, seq: int, reply: Any) -> None:
        self._outbox[identity].append((seq, reply))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, defaultdict(list)
        for identity, replies in outbox.items():
            self._socket.send_multipart([identity, ipc.encode(("replies", replies))])


async def _main(settings: Settings, socket_path: str) -> int:
    server = SeqinferServer(settings)
    await server.start_engine(token_table(settings))
    assert server.engine is not None
    observer = None
    if server.metrics_port:  # else prometheus_client stays unloaded here
        from seqinfer.service.metrics import PrometheusObserver

        if isinstance(server.observer, PrometheusObserver):
            observer = server.observer
    host = EngineHost(server.engine, socket_path, observer)
    serving = asyncio.get_running_loop().create_task(host.serve())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    if settings.auth_token_file is not None:
        engine = server.engine
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: _reload_tenants(settings, engine)
        )
    freeze_startup_heap()
    print(READY, flush=True)
    await stop.wait()
    log.info("engine: draining")
    # Answers still go out while the runtimes drain: the host keeps serving.
    await server.stop()
    serving.cancel()
    host.close()
    return 1 if server.timed_out else 0


def _reload_tenants(settings: Settings, engine: LocalEngine) -> None:
    """SIGHUP from the supervisor: the quotas and model lists of the token file as it is
    now (the front ends re-read it for the tokens); a refused file keeps the old ones."""
    table = reload_token_table(settings)
    if table is not None:
        engine.set_tenants(table.tenants)


def main() -> None:
    settings = Settings.model_validate_json(os.environ[ipc.SETTINGS_ENV])
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s engine %(name)s: %(message)s"
    )
    code = asyncio.run(_main(settings, os.environ[ipc.ENGINE_SOCKET_ENV]))
    sys.stdout.flush()
    os._exit(code)  # an engine thread still computing must not keep the process
