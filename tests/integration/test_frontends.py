"""`seqinfer serve --frontends 2`: one engine process, two front ends, one port, real processes.

Any front end serves any session, because the engine process alone holds
them: a session opened through one front end's own port is stepped through
the other's and the shared one, and every output equals torch.nn.GRU over
the session's whole sequence. A front end that dies is started again with
the sessions intact; SIGTERM stops everything with exit 0; the engine dying
ends the server with exit 1 and a line saying so.
"""

from __future__ import annotations

import os
import re
import signal

import grpc
import numpy as np

from seqinfer.service.models.builtin import bench_gru
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import from_tensor, reference_run, to_tensor, wait_until

MODEL = bench_gru()
FRONT = re.compile(r"seqinfer: front end (\d+) on port (\d+) \(pid (\d+)\)")


def _x(seed: int, t: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 64)).astype(np.float32)


def _fronts(server: ServeProcess, count: int) -> dict[int, tuple[int, int]]:
    """Front end index -> (own port, pid), the latest announcement of each."""
    found: dict[int, tuple[int, int]] = {}
    for line in server.wait_lines("seqinfer: front end ", count):
        match = FRONT.match(line)
        assert match, line
        found[int(match[1])] = (int(match[2]), int(match[3]))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stub(port: int) -> tuple[grpc.Channel, pb_grpc.SeqinferStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.SeqinferStub(channel)


def test_any_front_end_serves_any_session_and_sigterm_exits_zero():
    with ServeProcess(serve_args("--frontends", "2")) as server:
        public = server.port()
        fronts = _fronts(server, 2)
        engine_pid = int(server.wait_lines("seqinfer: engine ready")[0].split("pid ")[1][:-1])
        (a_port, a_pid), (b_port, _) = fronts[0], fronts[1]
        channels = [_stub(p) for p in (a_port, b_port, public)]
        a, b, shared = (stub for _, stub in channels)
        sent: dict[str, list[np.ndarray]] = {f"s{i}": [] for i in range(4)}
        for sid in sent:
            a.OpenSession(pb.OpenSessionRequest(model="bench-gru", session_id=sid), timeout=30)

        def step(stub: pb_grpc.SeqinferStub, sid: str, seed: int) -> pb.StepResponse:
            x = _x(seed)
            sent[sid].append(x)
            return stub.Step(pb.StepRequest(session_id=sid, inputs=to_tensor(x)), timeout=30)

        assert step(b, "s0", 1).step == 1
        assert step(a, "s0", 2).step == 2
        requests = []
        for k, sid in enumerate(sent):  # one stream, four sessions, through b
            x = _x(100 + k, 3)
            sent[sid].append(x)
            requests.append(
                pb.StepRequest(session_id=sid, inputs=to_tensor(x), output_mode=pb.OUTPUT_MODE_ALL)
            )
        streamed = {r.response.session_id: r for r in b.StreamSteps(iter(requests), timeout=30)}
        many = shared.StepMany(
            pb.StepManyRequest(
                steps=[
                    pb.StepRequest(session_id=sid, inputs=to_tensor(_x(200 + k)))
                    for k, sid in enumerate(sent)
                ]
            ),
            timeout=30,
        )
        for k, sid in enumerate(sent):
            sent[sid].append(_x(200 + k))
        for k, (sid, xs) in enumerate(sent.items()):
            want, _ = reference_run(MODEL, np.concatenate(xs))
            got = from_tensor(many.results[k].response.outputs)
            np.testing.assert_allclose(got, want[-1], atol=1e-5)
            before = sum(len(x) for x in xs[:-2])
            np.testing.assert_allclose(
                from_tensor(streamed[sid].response.outputs), want[before : before + 3], atol=1e-5
            )
        for channel, _ in channels:
            channel.close()

        # A front end that dies is started again, and the sessions are still there.
        os.kill(a_pid, signal.SIGKILL)
        restarted = _fronts(server, 3)[0]
        assert restarted[1] != a_pid
        channel, again = _stub(restarted[0])
        with channel:
            assert again.GetSession(pb.GetSessionRequest(session_id="s0"), timeout=30).step == 6
        pids = [pid for _, pid in _fronts(server, 3).values()] + [engine_pid]
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.log()[-3000:]
        wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "the children to exit")


def test_the_engine_dying_ends_the_server_with_exit_1():
    with ServeProcess(serve_args("--frontends", "2")) as server:
        server.port()
        fronts = _fronts(server, 2)
        engine_pid = int(server.wait_lines("seqinfer: engine ready")[0].split("pid ")[1][:-1])
        os.kill(engine_pid, signal.SIGKILL)
        assert server.wait(60) == 1
        assert "the engine process exited" in server.log()
        wait_until(
            lambda: not any(_alive(pid) for _, pid in fronts.values()), 30, "front ends to exit"
        )
