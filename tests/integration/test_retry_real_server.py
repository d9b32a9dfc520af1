"""Retries against the real server: what ``expected_step`` + ``request_id`` promise
when the server pipelines, and the Python client's stream reconnect, resend
and ``ReplyLost`` when a real connection breaks.

The scripted fake of ``tests/unit/client_fake_server/fake_seqinfer.py`` applies
strictly in order and breaks where it is told; here the breaks are made by a
loopback TCP proxy between client and server that the test cuts, freezes
(drops what the server sends) or holds (new connections wait), while an
``EngineGate`` decides what the server has computed at that moment.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.client import AsyncClient, Client, ReplyLost, RetryPolicy
from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    from_tensor,
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

MODEL = make_model("dense", name="r", seed=31)
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter=0.0)


def _x(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: Counter[tuple[str, ...]] = Counter()

    def rpc_started(self, method: str) -> None:
        self.events["started", method] += 1

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        self.events["finished", method, code] += 1


class _Link:
    """One proxied connection: a client socket and its upstream socket."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.frozen = False  # drop what the server sends from now on

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Proxy:
    """A loopback TCP proxy whose connections a test can freeze, cut and hold back."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._admit = threading.Event()
        self._admit.set()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.connections = 0  # connections forwarded so far
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._open, args=(downstream,), daemon=True).start()

    def _open(self, downstream: socket.socket) -> None:
        self._admit.wait()  # a held connection is accepted but not yet forwarded
        upstream = socket.create_connection(self._target)
        link = _Link(downstream, upstream)
        with self._lock:
            self._links.append(link)
            self.connections += 1
        for src, dst, is_reply in ((downstream, upstream, False), (upstream, downstream, True)):
            threading.Thread(
                target=self._pump, args=(link, src, dst, is_reply), daemon=True
            ).start()

    @staticmethod
    def _pump(link: _Link, src: socket.socket, dst: socket.socket, is_reply: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if is_reply and link.frozen:
                    continue  # lost on the way back
                dst.sendall(data)
            except OSError:
                break
        link.close()

    def freeze(self) -> None:
        """From now on, what the server sends on current connections is lost."""
        with self._lock:
            for link in self._links:
                link.frozen = True

    def cut(self) -> None:
        """Breaks every current connection (both sides see it closed)."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def hold(self) -> None:
        """New connections wait (accepted, not forwarded) until ``release``."""
        self._admit.clear()

    def release(self) -> None:
        self._admit.set()

    def close(self) -> None:
        self.release()
        self._listener.close()
        self.cut()


@contextmanager
def proxied(port: int) -> Iterator[Proxy]:
    proxy = Proxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


def _session(server: Any, sid: str) -> Any:
    return server.server.runtimes[0].table.by_id[sid]


def _step_of(server: Any, sid: str) -> int:
    return int(server.run_sync(lambda: _session(server, sid).step))


def _queue_depth(server: Any) -> int:
    return int(server.run_sync(lambda: server.server.runtimes[0].scheduler.queue_depth))


def _queued_abandoned(server: Any) -> bool:
    """Every queued step's caller is gone. In one process that is so the moment the
    stream ends; through a front end, once its recall has reached the engine."""

    def check() -> bool:
        sessions = server.server.runtimes[0].table.by_id.values()
        return all(item.abandoned() for s in sessions for item in (s.pending or ()))

    return bool(server.run_sync(check))


# ------------------------------------------------------------ unary retries --


def test_retry_of_an_older_request_is_a_step_gap_not_a_replay():
    x = _x(3, 1)
    with running_server([MODEL]) as server, stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="r", session_id="s"))

        def step(i: int, expected: int, rid: str) -> pb.StepResponse:
            request = pb.StepRequest(
                session_id="s",
                inputs=to_tensor(x[i : i + 1]),
                expected_step=expected,
                request_id=rid,
                return_state=True,
            )
            return api.Step(request)

        step(0, 0, "r1")
        last = step(1, 1, "r2")
        with pytest.raises(grpc.RpcError) as info:
            step(0, 0, "r1")  # r1 is no longer the last request: its reply is gone
        code, reason, metadata = error_reason(info.value)
        assert (code, reason, metadata["current_step"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "STEP_GAP",
            "2",
        )
        again = step(1, 1, "r2")  # the last one still replays
        assert again.replayed and again.step == 2 and again.outputs == last.outputs
        export = api.ExportState(pb.ExportStateRequest(session_id="s"))
    assert export.session.step == 2
    _, want = reference_run(MODEL, x[:2])
    np.testing.assert_allclose(from_tensor(export.state), want, atol=1e-5, rtol=0)


def test_reply_of_a_request_in_the_engine_at_its_deadline_serves_the_retry():
    x = _x(1, 2)
    request = pb.StepRequest(session_id="s", inputs=to_tensor(x), expected_step=0, request_id="r1")
    with running_server([MODEL]) as server, stub(server.address) as api:
        api.OpenSession(pb.OpenSessionRequest(model="r", session_id="s"))
        with gated(server) as gate:
            # Generous: it only has to reach the engine before the client gives up.
            call = api.Step.future(request, timeout=4.0)
            gate.wait_entered(1)
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _step_of(server, "s") == 0  # still held in the engine
            gate.open()
            wait_until(lambda: _step_of(server, "s") == 1, what="the held step applied")
        retry = api.Step(request)
        export = api.ExportState(pb.ExportStateRequest(session_id="s"))
    assert retry.replayed and retry.step == 1 and retry.request_id == "r1"
    want_out, want_state = reference_run(MODEL, x)
    np.testing.assert_allclose(from_tensor(retry.outputs), want_out[-1], atol=1e-5, rtol=0)
    assert export.session.step == 1  # applied once, not again by the retry
    np.testing.assert_allclose(from_tensor(export.state), want_state, atol=1e-5, rtol=0)


# ------------------------------------------------------- client stream breaks --


def test_stream_break_resends_unanswered_steps_exactly_once():
    """One step in the engine and three queued when the connection breaks: the
    server drops the queued ones unapplied and caches the engine's reply; the
    client reconnects, resends all four, gets the first replayed and the rest
    applied, each once."""
    recorder = Recorder()
    x = _x(4, 3)
    want, want_state = reference_run(MODEL, x)
    with (
        running_server([MODEL], observer=recorder) as server,
        proxied(server.server.port) as proxy,
        Client(proxy.address, retry=FAST, timeout=30) as client,
    ):
        session = client.open_session("r", "s")
        with gated(server) as gate:
            stream = client.stream()
            futures = [stream.submit(session, x[i], output_mode="all") for i in range(4)]
            gate.wait_entered(1)
            wait_until(lambda: _queue_depth(server) == 3, what="three steps queued")
            proxy.hold()
            proxy.cut()
            wait_until(
                lambda: recorder.events["finished", "StreamSteps", "CANCELLED"] == 1,
                what="the server saw the stream end",
            )
            wait_until(lambda: _queued_abandoned(server), what="the queued steps abandoned")
            gate.open()
            wait_until(lambda: _queue_depth(server) == 0, what="the queued steps dropped")
            assert _step_of(server, "s") == 1  # only the step that was in the engine
            proxy.release()
            replies = [f.result(timeout=60) for f in futures]
            stream.close()
        assert [r.step for r in replies] == [1, 2, 3, 4]
        assert [r.replayed for r in replies] == [True, False, False, False]
        for i, reply in enumerate(replies):
            np.testing.assert_allclose(reply.outputs, want[i : i + 1], atol=1e-5, rtol=0)
        state, info = client.export_state("s")
        assert info.step == 4 and session.step_count == 4
        np.testing.assert_allclose(state, want_state, atol=1e-5, rtol=0)
    assert recorder.events["started", "StreamSteps"] == 2  # broke once, reopened once
    assert proxy.connections == 2


def test_stream_break_after_lost_replies_reports_reply_lost_and_applies_once():
    """The server applies steps 2-4 but their replies never arrive. After the
    break only the last of them can be replayed; 2 and 3 come back as
    ReplyLost (applied, outputs gone), and nothing is applied twice."""
    x = _x(5, 4)
    want, want_state = reference_run(MODEL, x)
    with (
        running_server([MODEL]) as server,
        proxied(server.server.port) as proxy,
        Client(proxy.address, retry=FAST, timeout=30) as client,
    ):
        session = client.open_session("r", "s")
        stream = client.stream()
        first = stream.submit(session, x[0]).result(timeout=60)
        proxy.freeze()
        lost = [stream.submit(session, x[i]) for i in (1, 2, 3)]
        wait_until(lambda: _step_of(server, "s") == 4, what="steps 2-4 applied")
        proxy.cut()
        outcomes = [f.exception(timeout=60) or f.result() for f in lost]
        last = stream.submit(session, x[4]).result(timeout=60)
        stream.close()
        state, info = client.export_state("s")
    assert first.step == 1 and not first.replayed
    assert [type(o) for o in outcomes[:2]] == [ReplyLost, ReplyLost]
    assert all(o.current_step == 4 for o in outcomes[:2])
    replayed = outcomes[2]
    assert replayed.replayed and replayed.step == 4
    np.testing.assert_allclose(replayed.outputs, want[3], atol=1e-5, rtol=0)
    assert last.step == 5 and session.step_count == 5
    np.testing.assert_allclose(last.outputs, want[4], atol=1e-5, rtol=0)
    assert info.step == 5
    np.testing.assert_allclose(state, want_state, atol=1e-5, rtol=0)


def test_stream_break_fails_steps_without_expected_step_instead_of_resending_them():
    """A bare-id step without expected_step cannot be resent safely: it fails with
    the stream's error; the server, which had it in the engine, applied it once."""
    x = _x(2, 5)
    with (
        running_server([MODEL]) as server,
        proxied(server.server.port) as proxy,
        Client(proxy.address, retry=FAST, timeout=30) as client,
    ):
        client.open_session("r", "bare")
        with gated(server) as gate:
            stream = client.stream()
            future = stream.submit("bare", x[:1])  # no expected_step
            gate.wait_entered(1)
            proxy.cut()
            error = future.exception(timeout=60)
            gate.open()
            wait_until(lambda: _step_of(server, "bare") == 1, what="the held step applied")
            # The stream itself reconnected and goes on.
            after = stream.submit("bare", x[1:], expected_step=1).result(timeout=60)
            stream.close()
    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert after.step == 2 and not after.replayed


async def test_async_stream_break_resends_unanswered_steps_exactly_once():
    """The asyncio stream, which has its own reconnect loop, in the same break."""
    recorder = Recorder()
    x = _x(3, 6)
    want, want_state = reference_run(MODEL, x)
    with (
        running_server([MODEL], observer=recorder) as server,
        proxied(server.server.port) as proxy,
    ):
        # Blocking waits run in threads: the client's stream lives on this loop.
        def wait(predicate: Any, what: str) -> Any:
            return asyncio.to_thread(wait_until, predicate, 60, what)

        async with AsyncClient(proxy.address, retry=FAST, timeout=30) as client:
            session = await client.open_session("r", "s")
            with gated(server) as gate:
                async with client.stream() as stream:
                    futures = [await stream.submit(session, x[i]) for i in range(3)]
                    await asyncio.to_thread(gate.wait_entered, 1)
                    await wait(lambda: _queue_depth(server) == 2, "two steps queued")
                    proxy.hold()
                    proxy.cut()
                    await wait(
                        lambda: recorder.events["finished", "StreamSteps", "CANCELLED"] == 1,
                        "the server saw the stream end",
                    )
                    await wait(lambda: _queued_abandoned(server), "the queued steps abandoned")
                    gate.open()
                    await wait(lambda: _queue_depth(server) == 0, "the queued steps dropped")
                    proxy.release()
                    replies = await asyncio.gather(*futures)
            state, info = await client.export_state("s")
    assert [(r.step, r.replayed) for r in replies] == [(1, True), (2, False), (3, False)]
    for i, reply in enumerate(replies):
        np.testing.assert_allclose(reply.outputs, want[i], atol=1e-5, rtol=0)
    assert info.step == 3 and session.step_count == 3
    np.testing.assert_allclose(state, want_state, atol=1e-5, rtol=0)
    assert recorder.events["started", "StreamSteps"] == 2
