"""``Client(addresses=...)`` spreads calls over both front ends of `serve --frontends 2`.

The kernel balances the shared port by connection, so a client with one
ordinary channel talks to one front end; over the front ends' own ports
with round_robin it should talk to both. The front ends export no metrics,
so the evidence is each front end's CPU time (utime + stime of the whole
process, from /proc): first a control phase sends every call to front end
0's own port, which shows how much a front end's CPU grows while it serves
those calls and how little while it serves none (front end 1, idle, over
the same calls: the noise floor, measured the same way). Then the same
number of calls through one round_robin client must make both grow well
above that floor. Counts of calls, not durations, so a slow machine only
makes it slower. Every output equals torch.nn.GRU over the session's inputs.
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from seqinfer.client import AsyncClient, Client, Session
from seqinfer.service.models.builtin import bench_gru
from tests.serve_process import ServeProcess, free_port, serve_args
from tests.support import reference_run, wait_until

MODEL = bench_gru()
FRONT = re.compile(r"seqinfer: front end (\d+) on port (\d+) \(pid (\d+)\)")
SESSIONS = 8
STEPS = 25  # per session and phase: 200 calls a phase
TICK = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; the fields after its ')' do not.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK


class _Run:
    """The sessions and every input each was given, to check outputs against torch at the end."""

    def __init__(self) -> None:
        self.sent: dict[str, list[np.ndarray]] = {}
        self.got: dict[str, list[np.ndarray]] = {}
        self.seed = 0

    def steps(self, sessions: list[Session], count: int) -> None:
        for _ in range(count):
            for s in sessions:
                self.seed += 1
                x = np.random.default_rng(self.seed).standard_normal((1, 64)).astype(np.float32)
                out = s.step(x)
                assert out.outputs is not None
                self.sent.setdefault(s.session_id, []).append(x)
                self.got.setdefault(s.session_id, []).append(out.outputs)

    def check(self) -> None:
        for sid, xs in self.sent.items():
            want, _ = reference_run(MODEL, np.concatenate(xs))
            np.testing.assert_allclose(np.stack(self.got[sid]), want, atol=1e-5)


def test_a_client_over_both_own_ports_uses_both_front_ends() -> None:
    with ServeProcess(serve_args("--frontends", "2")) as server:
        server.port()
        fronts: dict[int, tuple[int, int]] = {}
        for line in server.wait_lines("seqinfer: front end ", 2):
            match = FRONT.match(line)
            assert match, line
            fronts[int(match[1])] = (int(match[2]), int(match[3]))
        (a_port, a_pid), (b_port, b_pid) = fronts[0], fronts[1]
        run = _Run()

        # Control: every call to front end 0; front end 1 idles over the same calls.
        with Client(f"127.0.0.1:{a_port}", timeout=30) as only_a:
            control = [only_a.open_session("bench-gru") for _ in range(SESSIONS)]
            run.steps(control, 1)  # connected and warm before measuring
            a0, b0 = _cpu_seconds(a_pid), _cpu_seconds(b_pid)
            run.steps(control, STEPS)
            busy, idle = _cpu_seconds(a_pid) - a0, _cpu_seconds(b_pid) - b0
        # The measure tells a serving front end from an idle one, or the rest proves nothing.
        assert busy > 4 * idle + 5 * TICK, (busy, idle)

        with Client(
            addresses=[f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"], timeout=30
        ) as balanced:
            assert balanced.address == f"ipv4:127.0.0.1:{a_port},127.0.0.1:{b_port}"
            sessions = [balanced.open_session("bench-gru") for _ in range(SESSIONS)]
            a1, b1 = _cpu_seconds(a_pid), _cpu_seconds(b_pid)
            run.steps(sessions, STEPS)
            grew = {
                "front end 0": _cpu_seconds(a_pid) - a1,
                "front end 1": _cpu_seconds(b_pid) - b1,
            }
        # Each serves about half the calls: a quarter of `busy` is far above the idle floor.
        floor = idle + busy / 4
        assert all(g > floor for g in grew.values()), (grew, busy, idle)
        run.check()


def _scraped_calls(url: str, method: str) -> dict[str, float]:
    """seqinfer_grpc_requests_total{method, code="OK"} by front end, from the engine's scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        s.labels["frontend"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "seqinfer_grpc_requests_total"
        and s.labels.get("method") == method
        and s.labels.get("code") == "OK"
    }


FIRST = 8  # calls counted from the client's very first one


def test_the_first_calls_spread_evenly_over_both_front_ends() -> None:
    """The client waits until round_robin reaches both addresses, so its first calls
    alternate: exactly half of them on each front end (counted by the front ends'
    own call metrics, on the engine's scrape), sync unary calls and async streams."""
    port = free_port()
    args = serve_args("--frontends", "2", "--metrics-port", str(port))
    with ServeProcess(args, metrics_port=port) as server:
        server.port()
        lines = server.wait_lines("seqinfer: front end ", 2)
        addresses = [f"127.0.0.1:{FRONT.match(line)[2]}" for line in lines]  # type: ignore[index]
        with Client(addresses=addresses, timeout=30) as client:
            sessions = [client.open_session("bench-gru") for _ in range(FIRST)]

        async def streams() -> None:
            async with AsyncClient(addresses=addresses, timeout=30) as aclient:
                x = np.zeros((1, 64), np.float32)
                for s in sessions:  # one StreamSteps call each, one after the other
                    async with aclient.stream() as stream:
                        await stream.step(s.session_id, x, expected_step=0)

        asyncio.run(streams())
        url = server.metrics_url()
        want = {"0": FIRST / 2, "1": FIRST / 2}
        for method in ("OpenSession", "StreamSteps"):
            wait_until(
                lambda m=method: sum(_scraped_calls(url, m).values()) == FIRST,  # type: ignore[misc]
                30,
                f"{FIRST} {method} calls on the scrape",
            )
            assert _scraped_calls(url, method) == want, method
