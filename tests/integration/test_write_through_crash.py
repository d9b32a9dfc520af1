"""Write-through under SIGKILL: five kill/restart cycles with 64 sessions streaming.

Each cycle pipelines several rounds of steps for every session over one
StreamSteps call and kills the server with SIGKILL after a fixed number of
replies, while the rest are queued or computing. After each restart, every
session's restored counter ``n`` (in steps) must satisfy

    acknowledged <= n <= sent

(no acknowledged step lost, none applied twice or invented), its state must
equal torch.nn.GRU over exactly the first ``n`` inputs sent, and where a
step was applied but its reply never arrived, a retry of it with its
``expected_step`` and ``request_id`` must come back ``replayed``: the client
recovers it without applying it twice. The kill point is a count of
replies, not a time, so the test does not depend on the machine's speed.
"""

from __future__ import annotations

import signal
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from seqinfer.service.models.builtin import bench_gru
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import reference_run, to_tensor

MODEL = bench_gru()
SESSIONS = 64
ROUNDS = 4  # pipelined per cycle
CYCLES = 5
T = 2
KILL_AFTER = SESSIONS * ROUNDS // 2 + 7  # replies received before the SIGKILL


def _inputs(sid: str, k: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{sid}/{k}".encode()))
    return rng.standard_normal((T, MODEL.spec.input_size)).astype(np.float32)


def _request(sid: str, k: int) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid,
        request_id=f"{sid}-r{k}",
        expected_step=k * T,
        inputs=to_tensor(_inputs(sid, k)),
        model="bench-gru",
        start=k == 0,
    )


def _serve(state_dir: Path) -> ServeProcess:
    args = serve_args("--durability", "write-through", "--state-dir", str(state_dir))
    return ServeProcess(args, env={"SEQINFER_TORCH_THREADS": "1"}, stop_grace=0)


def _stream_until_killed(
    server: ServeProcess, api: pb_grpc.SeqinferStub, sent: dict[str, int], acked: dict[str, int]
) -> None:
    """Pipeline ROUNDS steps per session; SIGKILL after KILL_AFTER replies."""
    ids = sorted(sent)
    starts = dict(sent)

    def requests() -> Iterator[pb.StepRequest]:
        for r in range(ROUNDS):
            for sid in ids:
                sent[sid] = starts[sid] + r + 1
                yield _request(sid, starts[sid] + r)

    replies = 0
    killed = threading.Event()
    try:
        for result in api.StreamSteps(requests(), timeout=120):
            assert result.WhichOneof("outcome") == "response", result
            response = result.response
            acked[response.session_id] = response.step // T
            replies += 1
            if replies == KILL_AFTER:
                server.send_signal(signal.SIGKILL)
                killed.set()
    except grpc.RpcError as broken:
        assert killed.is_set(), f"stream failed before the kill: {broken}"
    assert killed.is_set(), "every reply arrived before the kill point"
    assert server.wait(60) == -signal.SIGKILL


def _check_restored(
    api: pb_grpc.SeqinferStub, sent: dict[str, int], acked: dict[str, int]
) -> tuple[int, int]:
    """Check every session against nn.GRU; returns (acknowledged steps lost, recovered)."""
    lost = recovered = 0
    for sid in sorted(sent):
        export = api.ExportState(pb.ExportStateRequest(session_id=sid), timeout=60)
        applied = export.session.step // T
        assert applied <= sent[sid], f"{sid}: {applied} steps applied of {sent[sid]} sent"
        lost += max(0, acked[sid] - applied)
        inputs = np.concatenate([_inputs(sid, k) for k in range(applied)])
        _, final = reference_run(MODEL, inputs)
        state = np.frombuffer(export.state.data, dtype="<f4").reshape(final.shape)
        np.testing.assert_allclose(state, final, rtol=1e-5, atol=1e-5, err_msg=sid)
        if applied > acked[sid]:
            # Applied and committed, reply lost with the process: the retry replays.
            retry = api.Step(_request(sid, applied - 1), timeout=60)
            assert retry.replayed and retry.step == applied * T, sid
            recovered += 1
        sent[sid] = acked[sid] = applied  # what was sent beyond it was never applied
    return lost, recovered


def test_sigkill_under_load_loses_no_acknowledged_step_over_five_cycles(tmp_path: Path):
    ids = [f"s{i}" for i in range(SESSIONS)]
    sent = dict.fromkeys(ids, 0)
    acked = dict.fromkeys(ids, 0)
    lost = recovered = 0
    for _ in range(CYCLES):
        with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
            api = pb_grpc.SeqinferStub(channel)
            if any(sent.values()):
                cycle_lost, cycle_recovered = _check_restored(api, sent, acked)
                lost += cycle_lost
                recovered += cycle_recovered
            _stream_until_killed(server, api, sent, acked)
    with _serve(tmp_path) as server, grpc.insecure_channel(server.address()) as channel:
        api = pb_grpc.SeqinferStub(channel)
        cycle_lost, cycle_recovered = _check_restored(api, sent, acked)
        lost += cycle_lost
        recovered += cycle_recovered
    assert lost == 0, f"{lost} acknowledged steps lost"
    print(f"acknowledged steps lost: {lost}; applied-unacknowledged recovered: {recovered}")
    assert sum(acked.values()) >= CYCLES * KILL_AFTER
