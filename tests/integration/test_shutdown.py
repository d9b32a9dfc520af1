"""Graceful shutdown: a signal with steps provably in flight; every accepted step gets its
reply, new work is refused with DRAINING, and the process exits by the grace deadline.

Work is held in the engine by a gate (``EngineGate`` in process, the
``tests.gated_serve`` launcher for a server process), so the drain always has
work to wait for, however fast the machine: nothing here waits on time.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.gated_serve import GatedServer
from tests.serve_process import ServeProcess, serve_args
from tests.support import error_reason, gated, make_model, running_server, to_tensor, wait_until

SERVE = serve_args("--log-level", "WARNING")
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


def _refused_with_draining(stub: pb_grpc.SeqinferStub, request: pb.StepRequest) -> None:
    """A new step during the drain: UNAVAILABLE with reason DRAINING, from seqinfer itself
    (a server that had simply gone away would give UNAVAILABLE without ErrorInfo)."""
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(request, timeout=30)
    assert error_reason(info.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "DRAINING")


def _env(**extra: str) -> dict[str, str]:
    return {"SEQINFER_TORCH_THREADS": "1", **extra}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_accepted_work_then_exits_zero(sig: signal.Signals) -> None:
    t = 3
    x = np.random.default_rng(0).standard_normal((t, 64)).astype(np.float32)
    with GatedServer(SERVE, env=_env()) as server, grpc.insecure_channel(server.address()) as ch:
        stub = pb_grpc.SeqinferStub(ch)
        for i in range(24):
            stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id=f"s{i}"))
        # One message: all 25 are accepted before the first batch forms. The
        # 24 sessions' first steps are in the held batch; s0's second step is
        # queued behind its first.
        steps = [pb.StepRequest(session_id=f"s{i}", inputs=to_tensor(x)) for i in range(24)]
        steps.append(pb.StepRequest(session_id="s0", inputs=to_tensor(x)))
        reply = stub.StepMany.future(pb.StepManyRequest(steps=steps), timeout=120)
        assert server.wait_held(1) == [24]
        server.send_signal(sig)
        wait_until(lambda: _health(ch) == NOT_SERVING, 60, "health NOT_SERVING")
        _refused_with_draining(stub, pb.StepRequest(session_id="s1", inputs=to_tensor(x)))
        server.open()
        results = reply.result(timeout=120).results
        assert server.wait(60) == 0, server.log()[-3000:]
    assert [r.WhichOneof("outcome") for r in results] == ["response"] * 25
    assert [r.response.step for r in results] == [t] * 24 + [2 * t]


def test_exit_at_the_grace_deadline_when_work_is_still_held() -> None:
    """A batch that never finishes: the process exits 1 once the grace period is over."""
    grace = 1.0
    env = _env(SEQINFER_SHUTDOWN_GRACE_SECONDS=str(grace))
    with GatedServer(SERVE, env=env) as server, grpc.insecure_channel(server.address()) as ch:
        stub = pb_grpc.SeqinferStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="held"))
        x = to_tensor(np.ones((2, 64), np.float32))
        held = stub.Step.future(pb.StepRequest(session_id="held", inputs=x), timeout=120)
        server.wait_held(1)  # never released
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)  # without the deadline it would wait for the gate forever
        waited = time.monotonic() - signalled
        with pytest.raises(grpc.RpcError) as info:
            held.result(timeout=60)
        log = server.log()
    assert code == 1, log[-3000:]
    assert waited >= grace, "exited before the grace period was over"
    assert "1 accepted steps unanswered" in log
    # What a client sees of a step cancelled by the shutdown: retryable UNAVAILABLE.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_exit_at_the_grace_deadline_when_a_client_holds_a_stream_open() -> None:
    """All work answered, one stream never half-closed: exit 0 at the deadline, not never."""
    grace = 1.0
    env = _env(SEQINFER_SHUTDOWN_GRACE_SECONDS=str(grace))
    stop_sending = threading.Event()
    x = to_tensor(np.ones((1, 64), np.float32))

    def requests() -> Any:
        yield pb.StepRequest(session_id="stream", inputs=x)
        stop_sending.wait(120)  # the client keeps its side of the stream open

    with GatedServer(SERVE, env=env) as server, grpc.insecure_channel(server.address()) as ch:
        server.open()
        stub = pb_grpc.SeqinferStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id="stream"))
        call = stub.StreamSteps(requests(), timeout=120)
        try:
            first = next(call)
            assert first.response.step == 1
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = server.wait(60)
            waited = time.monotonic() - signalled
            with pytest.raises(grpc.RpcError) as info:
                next(call)
        finally:
            stop_sending.set()
            call.cancel()
        log = server.log()
    assert code == 0, log[-3000:]
    assert waited >= grace, "the open stream was cut before the grace period was over"
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_drain_refuses_new_work_with_draining_and_turns_health_not_serving() -> None:
    model = make_model("dense", name="slow")
    t = 5
    x = to_tensor(np.ones((t, 8), np.float32))
    with running_server([model]) as server, gated(server) as gate:
        runtime = server.server.runtimes[0]
        scheduler = runtime.scheduler
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.SeqinferStub(channel)
        for i in range(8):
            stub.OpenSession(pb.OpenSessionRequest(model="slow", session_id=f"s{i}"))
        with ThreadPoolExecutor(8) as pool:
            accepted = [
                pool.submit(stub.Step, pb.StepRequest(session_id=f"s{i}", inputs=x), timeout=120)
                for i in range(8)
            ]
            gate.wait_entered(1)
            # All 8 are in: in the held batch or queued behind it.
            wait_until(
                lambda: server.run_sync(lambda: scheduler.in_flight + scheduler.queue_depth) == 8,
                60,
                "8 steps accepted",
            )
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 120})
            stopper.start()
            wait_until(lambda: _health(channel) == NOT_SERVING, 60, "health NOT_SERVING")
            _refused_with_draining(stub, pb.StepRequest(session_id="s0", inputs=x))
            assert stopper.is_alive()  # the held work keeps the drain waiting
            gate.open()
            replies = [f.result(timeout=120) for f in accepted]
            stopper.join(120)
        assert not stopper.is_alive()
        assert sorted(r.session_id for r in replies) == [f"s{i}" for i in range(8)]
        assert all(r.step == t for r in replies)
        channel.close()


def test_bad_configuration_exits_2_with_the_field_named(tmp_path):
    config = tmp_path / "seqinfer.yaml"
    config.write_text("max_batch_size: 0\n")
    with ServeProcess(["serve", "--config", str(config)]) as server:
        assert server.wait(60) == 2
        assert "max_batch_size" in server.log()
    with ServeProcess(["serve"], env={"SEQINFER_DEVICE": "tpu"}) as server:
        assert server.wait(60) == 2 and "device" in server.log()
