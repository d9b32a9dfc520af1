"""Unary calls and the session handle on the real server, outputs checked against torch.

Models, dense and token steps, typed refusals (the handle keeps the server's
counter), step_many with several handles, and fork / export / import
carrying state and counter over.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqinfer.client import (
    Client,
    InvalidInput,
    ModelNotFound,
    SessionExists,
    SessionNotFound,
    StepCall,
    StepGap,
)
from tests.integration.client_real_server.served import BENCH, TOKENS, frames, outputs
from tests.support import reference_run


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
