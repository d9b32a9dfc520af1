"""seqinfer.client and the client CLI against the real server on loopback.

Outputs are checked against torch.nn.GRU (tests.support.reference_run), so
the codec, shaping and session bookkeeping are checked end to end, not only
"some array came back".
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from seqinfer.cli import client_cmds
from seqinfer.client import (
    AsyncClient,
    Client,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    SessionExists,
    SessionNotFound,
    StepCall,
    StepGap,
    StepOutput,
)
from seqinfer.service.models.builtin import bench_gru
from tests.support import gated, make_model, reference_run, running_server

BENCH = bench_gru()
TOKENS = make_model("tokens", name="tok", input_size=30, output_kind="probabilities", seed=3)
RNG = np.random.default_rng(7)


def outputs(out: StepOutput | Any) -> np.ndarray:
    """A reply's outputs, which these tests always ask for."""
    assert isinstance(out, StepOutput) and out.outputs is not None, out
    return out.outputs


def frames(t: int) -> np.ndarray:
    return RNG.standard_normal((t, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def server() -> Any:
    with running_server([BENCH, TOKENS]) as srv:
        yield srv


@pytest.fixture
def client(server: Any) -> Any:
    with Client(server.address, timeout=30) as c:
        yield c


def test_models(client: Client) -> None:
    by_name = {m.name: m for m in client.list_models()}
    bench = by_name["bench-gru"]
    assert (bench.input_kind, bench.input_size, bench.hidden_size, bench.num_layers) == (
        "dense",
        64,
        256,
        2,
    )
    assert (bench.output_size, bench.dtype) == (64, "float32")
    assert client.get_model("tok").input_kind == "tokens"
    with pytest.raises(ModelNotFound):
        client.get_model("nope")


def test_session_steps_match_torch(client: Client) -> None:
    x = frames(6)
    want_out, want_state = reference_run(BENCH, x)
    with client.session("bench-gru") as s:
        a = s.step(x[:4], output_mode="all")
        assert outputs(a).shape == (4, 64)
        np.testing.assert_allclose(outputs(a), want_out[:4], atol=1e-5, rtol=0)
        last = s(x[4])  # one [F] vector -> [1, F]
        assert last.shape == (64,)
        np.testing.assert_allclose(last, want_out[4], atol=1e-5, rtol=0)
        b = s.step(x[5], return_state=True)
        assert b.state is not None and b.state.shape == (2, 256)
        np.testing.assert_allclose(b.state, want_state, atol=1e-5, rtol=0)
        assert s.step_count == 6 == b.step
        sid = s.session_id
    with pytest.raises(SessionNotFound):
        client.get_session(sid)


def test_token_inputs(client: Client) -> None:
    ids = np.array([3, 1, 4, 1, 5])
    want, _ = reference_run(TOKENS, ids)
    with client.session("tok") as s:
        np.testing.assert_allclose(s(ids[:4], output_mode="all"), want[:4], atol=1e-5, rtol=0)
        np.testing.assert_allclose(s(int(ids[4])), want[4], atol=1e-5, rtol=0)


def test_typed_errors(client: Client) -> None:
    with pytest.raises(SessionNotFound) as nf:
        client.step("no-such-session", frames(1))
    assert nf.value.reason == "SESSION_NOT_FOUND"
    s = client.open_session("bench-gru", "typed-errors")
    with pytest.raises(SessionExists):
        client.open_session("bench-gru", "typed-errors")
    s.step(frames(2))
    with pytest.raises(StepGap) as gap:
        client.step(s.session_id, frames(1), expected_step=7)
    assert gap.value.current_step == 2
    with pytest.raises(InvalidInput) as bad:
        s.step(np.ones((1, 63), np.float32))
    assert bad.value.field is not None and bad.value.field.startswith("inputs")
    assert s.step_count == 2
    s.close()


def test_repeated_request_is_replayed_not_reapplied(client: Client) -> None:
    """What makes the client's retries exactly-once, checked on the real server."""
    s = client.open_session("bench-gru")
    x = frames(1)
    first = client.step(s.session_id, x, expected_step=0, request_id="r1")
    again = client.step(s.session_id, x, expected_step=0, request_id="r1")
    assert (first.step, again.step) == (1, 1)
    assert not first.replayed and again.replayed
    np.testing.assert_array_equal(outputs(first), outputs(again))
    assert client.get_session(s.session_id).step == 1
    s.close()


class _LoseFirstStepReply(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first Step reach the server, then reports UNAVAILABLE (a lost reply)."""

    def __init__(self) -> None:
        self.lost = False

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/Step") and not self.lost:
            self.lost = True
            outcome.result()  # the server applied it
            raise _Unavailable()
        return outcome


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "reply lost (test)"

    def trailing_metadata(self) -> None:
        return None


def test_retry_after_lost_reply_applies_once(server: Any) -> None:
    interceptor = _LoseFirstStepReply()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor)
    x = frames(2)
    want, _ = reference_run(BENCH, x)
    with Client(channel=channel, retry=RetryPolicy(initial_backoff=0.01)) as c:
        s = c.open_session("bench-gru")
        out = s.step(x[:1])
        assert interceptor.lost and out.replayed and out.step == 1
        np.testing.assert_allclose(outputs(out), want[0], atol=1e-5, rtol=0)
        # Had it been applied twice, this step's output would differ from torch's.
        np.testing.assert_allclose(s(x[1]), want[1], atol=1e-5, rtol=0)
        s.close()
    channel.close()


def test_stream_many_sessions_pipelined(client: Client) -> None:
    n_sessions, n_steps = 12, 8
    inputs = [frames(n_steps) for _ in range(n_sessions)]
    sessions = [client.open_session("bench-gru") for _ in range(n_sessions)]
    with client.stream() as stream:
        futures = [
            [stream.submit(s, inputs[i][t]) for i, s in enumerate(sessions)] for t in range(n_steps)
        ]
    for i, s in enumerate(sessions):
        want, _ = reference_run(BENCH, inputs[i])
        got = np.stack([outputs(futures[t][i].result()) for t in range(n_steps)])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert s.step_count == n_steps
        s.close()


def test_stream_step_sent_behind_a_refused_one_gets_step_gap() -> None:
    """Pipelined behind a bad item whose refusal has not come back, a step expects the
    counter after the bad one and must be refused with STEP_GAP, not applied.

    The gate holds the first step in the engine; the bad item's refusal waits
    behind it (results of one session leave in order), so `after` is sent
    before the client can know. Its own server: the gate stays installed.
    """
    x = frames(3)
    with running_server([BENCH]) as srv, gated(srv) as gate:
        with Client(srv.address, timeout=60) as c:
            s = c.open_session("bench-gru")
            with c.stream() as stream:
                ok = stream.submit(s, x[0])
                gate.wait_entered(1)
                bad = stream.submit(s, np.ones((1, 5), np.float32))
                missing = stream.submit("missing-in-stream", frames(1))
                after = stream.submit(s, x[1])
                gate.open()
            assert ok.result().step == 1
            assert isinstance(bad.exception(), InvalidInput)
            assert isinstance(missing.exception(), SessionNotFound)
            gap = after.exception()
            assert isinstance(gap, StepGap) and gap.current_step == 1
            assert s.step_count == 1
            # Neither the bad step nor `after` was applied: the next one follows `ok`.
            np.testing.assert_allclose(
                s(x[2]), reference_run(BENCH, x[[0, 2]])[0][-1], atol=1e-5, rtol=0
            )


def test_stream_step_sent_after_a_refusal_came_back_applies(client: Client) -> None:
    """Once the bad item's refusal is back, the handle is at the counter again and the
    next step expects it and applies."""
    x = frames(2)
    s = client.open_session("bench-gru")
    with client.stream() as stream:
        ok = stream.submit(s, x[0])
        bad = stream.submit(s, np.ones((1, 5), np.float32))
        assert isinstance(bad.exception(timeout=60), InvalidInput)
        assert s.step_count == 1
        after = stream.submit(s, x[1])
    assert ok.result().step == 1
    assert after.result().step == 2 and s.step_count == 2
    np.testing.assert_allclose(
        outputs(after.result()), reference_run(BENCH, x)[0][-1], atol=1e-5, rtol=0
    )
    s.close()


def test_step_many(client: Client) -> None:
    a, b = client.open_session("bench-gru"), client.open_session("bench-gru")
    xa, xb = frames(3), frames(1)
    ra, rb, rm = client.step_many([(a, xa), (b, xb), StepCall("missing-many", frames(1))])
    np.testing.assert_allclose(outputs(ra), reference_run(BENCH, xa)[0][-1], atol=1e-5, rtol=0)
    assert rb.step == 1  # type: ignore[union-attr]
    assert isinstance(rm, SessionNotFound)
    assert (a.step_count, b.step_count) == (3, 1)
    # The same handle twice: its items apply in order, each expecting the last.
    xs = frames(2)
    r1, r2 = client.step_many([(a, xs[:1]), (a, xs[1:])])
    assert (r1.step, r2.step, a.step_count) == (4, 5, 5)  # type: ignore[union-attr]
    _, want_state = reference_run(BENCH, np.concatenate([xa, xs]))
    np.testing.assert_allclose(
        client.export_state(a.session_id).state, want_state, atol=1e-5, rtol=0
    )
    a.close()
    b.close()


def test_fork_export_import(client: Client) -> None:
    x, y = frames(3), frames(2)
    with client.session("bench-gru") as src:
        src.step(x)
        fork = src.fork()
        assert fork.step_count == 3
        np.testing.assert_array_equal(src(y), fork(y))
        state, info = client.export_state(src.session_id)
        assert state.shape == (2, 256) and info.step == 5
        _, want_state = reference_run(BENCH, np.concatenate([x, y]))
        np.testing.assert_allclose(state, want_state, atol=1e-5, rtol=0)
        moved = client.import_state(
            "imported", state, create=True, model="bench-gru", step=info.step
        )
        assert moved.step == 5
        copy = client.attach("imported")
        z = frames(1)
        np.testing.assert_array_equal(copy(z), src(z))  # expected_step carried over
        copy.close()
        fork.close()


async def test_async_client_and_stream(server: Any) -> None:
    async with AsyncClient(server.address, timeout=30) as c:
        assert "bench-gru" in {m.name for m in await c.list_models()}
        x = frames(4)
        want, _ = reference_run(BENCH, x)
        async with c.session("bench-gru") as s:
            out = await s.step(x[:2], output_mode="all")
            np.testing.assert_allclose(outputs(out), want[:2], atol=1e-5, rtol=0)
            async with c.stream() as stream:
                results = [await stream.submit(s, x[t]) for t in (2, 3)]
                outs = await asyncio.gather(*results)
            np.testing.assert_allclose(outputs(outs[-1]), want[3], atol=1e-5, rtol=0)
            assert s.step_count == 4
        with pytest.raises(SessionNotFound):
            await c.get_session(s.session_id)


# -- CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli(server: Any) -> Any:
    app = typer.Typer()
    client_cmds.register(app)
    runner = CliRunner(env={"SEQINFER_ADDRESS": server.address})

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return run


def test_cli_session_lifecycle_and_steps(cli: Any, tmp_path: Path) -> None:
    result = cli("models", "--output", "json")
    assert result.exit_code == 0, result.output
    assert "bench-gru" in {m["name"] for m in json.loads(result.stdout)}

    opened = cli("session", "open", "bench-gru", "--id", "cli-demo", "--ttl", "600")
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["session_id"] == "cli-demo"

    x = frames(2)
    stepped = cli("step", "cli-demo", "--json", json.dumps(x.tolist()), "--all")
    assert stepped.exit_code == 0, stepped.output
    body = json.loads(stepped.stdout)
    assert body["step"] == 2
    np.testing.assert_allclose(body["outputs"], reference_run(BENCH, x)[0], atol=1e-5, rtol=0)

    path = tmp_path / "x.npy"
    np.save(path, frames(3))
    via_npy = cli("step", "cli-demo", "--npy", str(path), "--return-state", "--expected-step", "2")
    assert via_npy.exit_code == 0, via_npy.output
    body = json.loads(via_npy.stdout)
    assert body["step"] == 5 and np.shape(body["state"]) == (2, 256)
    assert np.shape(body["outputs"]) == (64,)

    one_row = cli("step", "cli-demo", "--json", json.dumps(frames(1)[0].tolist()))
    assert json.loads(one_row.stdout)["step"] == 6
    assert json.loads(cli("step", "cli-demo", "--random", "2").stdout)["step"] == 8

    got = cli("session", "get", "cli-demo")
    assert json.loads(got.stdout)["step"] == 8

    forked = cli("session", "fork", "cli-demo", "--new-id", "cli-fork")
    assert json.loads(forked.stdout)["step"] == 8

    closed = cli("session", "close", "cli-demo")
    assert json.loads(closed.stdout) == {"session_id": "cli-demo", "final_step": 8}
    assert cli("session", "close", "cli-fork").exit_code == 0

    started = cli("step", "cli-start", "--start", "--model", "bench-gru", "--random", "1", "--end")
    body = json.loads(started.stdout)
    assert body["created"] and body["closed"] and body["step"] == 1


def test_cli_errors(cli: Any) -> None:
    missing = cli("session", "get", "nope")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: SESSION_NOT_FOUND: ")
    assert cli("session", "open", "bench-gru", "--id", "cli-err").exit_code == 0
    gap = cli("step", "cli-err", "--random", "1", "--expected-step", "3")
    assert gap.exit_code == 1 and gap.stderr.startswith("error: STEP_GAP: ")
    bad_json = cli("step", "cli-err", "--json", "[[1, 2")
    assert bad_json.exit_code == 2 and bad_json.stderr.startswith("error: INVALID_INPUT: ")
    wrong_width = cli("step", "cli-err", "--json", "[[1, 2, 3]]")
    assert wrong_width.exit_code == 1 and wrong_width.stderr.startswith("error: INVALID_INPUT: ")
    none = cli("step", "cli-err")
    assert none.exit_code == 2 and "exactly one of" in none.stderr
    assert cli("session", "close", "cli-err").exit_code == 0


def test_console_script_end_to_end(server: Any) -> None:
    """The installed `seqinfer` entry point, address from the environment."""
    exe = shutil.which("seqinfer", path=os.path.dirname(sys.executable))
    assert exe is not None
    env = {**os.environ, "SEQINFER_ADDRESS": server.address}
    done = subprocess.run(
        [exe, "step", "cli-e2e", "--start", "--model", "bench-gru", "--random", "2", "--end"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["created"] and body["closed"] and body["step"] == 2
    gone = subprocess.run(
        [exe, "session", "get", "cli-e2e"], env=env, capture_output=True, text=True, timeout=120
    )
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: SESSION_NOT_FOUND: ")
