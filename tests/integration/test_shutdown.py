"""Graceful shutdown: SIGTERM with steps in flight; every accepted step gets its reply."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import error_reason, make_model, running_server, to_tensor

CLI = [sys.executable, "-c", "from seqinfer.cli.main import main; main()"]


def _start_cli_server(*extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("seqinfer: serving on "):
            return process, line.split()[-1]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"server did not start: {process.stderr.read() if process.stderr else ''}")


def test_sigterm_finishes_accepted_work_then_exits_zero():
    process, address = _start_cli_server()
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.SeqinferStub(channel)
        x = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)
        for i in range(24):
            stub.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id=f"s{i}"))
        with ThreadPoolExecutor(24) as pool:
            futures = [
                pool.submit(stub.Step, pb.StepRequest(session_id=f"s{i}", inputs=to_tensor(x)))
                for i in range(24)
            ]
            time.sleep(0.5)  # all 24 are accepted and queued; the engine works through them
            process.send_signal(signal.SIGTERM)
            replies = [f.result(timeout=60) for f in futures]
        assert all(r.step == 400 for r in replies)
        assert process.wait(timeout=60) == 0
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()


def test_drain_refuses_new_work_with_draining_and_turns_health_not_serving():
    model = make_model("dense", hidden=128, name="slow")
    with running_server([model]) as server:
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.SeqinferStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        x = to_tensor(np.ones((1500, 8), np.float32))
        for i in range(8):
            stub.OpenSession(pb.OpenSessionRequest(model="slow", session_id=f"s{i}"))
        with ThreadPoolExecutor(8) as pool:
            accepted = [
                pool.submit(stub.Step, pb.StepRequest(session_id=f"s{i}", inputs=x))
                for i in range(8)
            ]
            time.sleep(0.3)
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 30})
            stopper.start()
            time.sleep(0.1)
            status = health.Check(health_pb2.HealthCheckRequest(service="")).status
            try:
                stub.Step(pb.StepRequest(session_id="s0", inputs=x), timeout=5)
                late_error = None
            except grpc.RpcError as error:
                late_error = error
            replies = [f.result(timeout=60) for f in accepted]
            stopper.join(60)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert late_error is not None and late_error.code() == grpc.StatusCode.UNAVAILABLE
        if late_error.details() != "Socket closed":  # the listener may already be gone
            assert error_reason(late_error)[1] == "DRAINING"
        assert all(r.step == 1500 for r in replies)
        channel.close()


def test_bad_configuration_exits_2_with_the_field_named(tmp_path):
    config = tmp_path / "seqinfer.yaml"
    config.write_text("max_batch_size: 0\n")
    result = subprocess.run(
        [*CLI, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "max_batch_size" in result.stderr
    env = {**os.environ, "SEQINFER_DEVICE": "tpu"}
    result = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "device" in result.stderr
