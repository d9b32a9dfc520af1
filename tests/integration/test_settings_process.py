"""The settings that shape the server process rather than a request, on a real
server: the metrics listener, reflection, torch threads, the device, the
shutdown grace and the log level.

Held work uses an ``EngineGate``; logs are waited for with ``wait_until``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.serve_process import SERVING, ServeProcess, free_port, serve_args
from tests.support import (
    ServerThread,
    gated,
    make_model,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

ALPHA = make_model("dense", name="alpha", seed=45)
ONE = to_tensor(np.ones((1, 8), np.float32))


# ----------------------------------------------------- metrics and reflection --


def _listening_ports() -> set[int]:
    """TCP ports this process listens on, read from /proc (no psutil here)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc")
def test_metrics_port_zero_opens_no_listener():
    before = _listening_ports()
    with running_server([ALPHA], metrics_port=0) as server:
        assert _listening_ports() - before == {server.server.port}
        assert server.server.metrics_port == 0
    wanted = free_port()
    with running_server([ALPHA], metrics_port=wanted) as server:
        assert _listening_ports() - before == {server.server.port, wanted}
        with urllib.request.urlopen(f"http://127.0.0.1:{wanted}/metrics", timeout=30) as page:
            assert b"seqinfer" in page.read()


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflect(iter([request])))
        return {s.name for s in reply.list_services_response.service}


def test_reflection_false_serves_no_reflection_service():
    with running_server([ALPHA], reflection=False) as server:
        with pytest.raises(grpc.RpcError) as info:
            _reflected_services(server.address)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with running_server([ALPHA]) as server:
        assert "seqinfer.v1.Seqinfer" in _reflected_services(server.address)


# ----------------------------------------------------------- torch, device --


def _engine_threads(server: ServerThread) -> int:
    (runtime,) = server.server.runtimes
    return int(server.call(runtime.worker.run(torch.get_num_threads)))


def test_torch_threads_zero_is_cores_minus_one_on_the_engine_thread(
    monkeypatch: pytest.MonkeyPatch,
):
    main_threads = torch.get_num_threads()
    try:
        with running_server([ALPHA], torch_threads=0) as server:
            assert _engine_threads(server) == max(1, (os.cpu_count() or 2) - 1)
        # This machine may have 2 cores, where 0 and the tests' usual 1 look alike.
        monkeypatch.setattr(os, "cpu_count", lambda: 5)
        with running_server([ALPHA], torch_threads=0) as server:
            assert _engine_threads(server) == 4
        monkeypatch.undo()
        with running_server([ALPHA], torch_threads=3) as server:
            assert _engine_threads(server) == 3
    finally:
        torch.set_num_threads(main_threads)


def test_device_auto_picks_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    with running_server([ALPHA], device="auto") as server, stub(server.address) as api:
        (model,) = api.ListModels(pb.ListModelsRequest()).models
        assert model.device.split(":")[0] == expected
        (runtime,) = server.server.runtimes
        assert runtime.slab.tensor.device.type == expected
        assert runtime.engine.gru.weight_hh_l0.device.type == expected
        assert api.Step(pb.StepRequest(session_id="s", start=True, inputs=ONE)).step == 1


# ----------------------------------------------------------- shutdown grace --


def test_stop_waits_shutdown_grace_seconds_for_accepted_work(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="seqinfer.service.server")
    with (
        running_server([ALPHA], shutdown_grace_seconds=0.5) as server,
        stub(server.address) as api,
    ):
        api.OpenSession(pb.OpenSessionRequest(session_id="s"))
        with gated(server) as gate:
            held = api.Step.future(pb.StepRequest(session_id="s", inputs=ONE))
            gate.wait_entered(1)
            # No grace passed: stop() must take it from the settings.
            stopper = threading.Thread(target=server.call, args=(server.server.stop(),))
            stopper.start()
            wait_until(
                lambda: "shutdown grace (0.5s) ended" in caplog.text,
                what="stop to give up on the held batch after the configured grace",
            )
            # The gRPC server's own grace is the same value: the held call is ended.
            with pytest.raises(grpc.RpcError):
                held.result(60)
            gate.open()
            stopper.join(60)
            assert not stopper.is_alive()


# ---------------------------------------------------------------- log level --


def _serve_and_stop(*flags: str, env: dict[str, str] | None = None) -> str:
    """Runs `seqinfer serve`, stops it with SIGTERM once serving; returns its stderr."""
    with ServeProcess(serve_args(*flags), env=env) as process:
        process.address()
        assert process.lines[0].startswith(SERVING), (process.lines, process.log())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        return process.log()


def test_log_level_sets_what_the_server_logs():
    quiet = _serve_and_stop("--log-level", "WARNING")
    assert " INFO " not in quiet and " DEBUG " not in quiet, quiet
    chatty = _serve_and_stop(env={"SEQINFER_LOG_LEVEL": "DEBUG"})
    assert " INFO seqinfer.service.server: seqinfer " in chatty, chatty
    assert " DEBUG " in chatty, chatty
