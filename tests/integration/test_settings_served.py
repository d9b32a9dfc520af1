"""Each setting of the README's table does what the table says, on a real server.

The defaults in the table are checked against ``Settings`` itself, so the
two cannot drift apart. Work in flight is held with an ``EngineGate``;
expiry is waited for with ``wait_until``, never assumed after a sleep. The
settings of the process itself (metrics, reflection, threads, device,
shutdown, logging) are in ``test_settings_process.py``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.service.config import Settings
from seqinfer.service.errors import ModelNotFound
from seqinfer.service.models.builtin import DEFAULT_MODEL_NAME
from seqinfer.service.observer import Observer
from seqinfer.v1 import seqinfer_pb2 as pb
from tests import support
from tests.support import (
    ServerThread,
    error_reason,
    gated,
    make_model,
    reference_run,
    running_server,
    stub,
    to_tensor,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
ALPHA = make_model("dense", name="alpha", seed=41)
BETA = make_model("dense", name="beta", input_size=6, seed=42)
ONE = to_tensor(np.ones((1, 8), np.float32))
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class BatchSizes(Observer):
    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = defaultdict(list)

    def batch_completed(self, model: str, requests: int, timesteps: int, seconds: float) -> None:
        self.sizes[model].append(requests)


def _refused(call: Any) -> tuple[Any, str, dict[str, str], str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code, reason, metadata = error_reason(info.value)
    return code, reason, metadata, info.value.details()


def _queue_depth(server: ServerThread, name: str) -> int:
    def read() -> int:
        (runtime,) = [r for r in server.server.runtimes if r.spec.name == name]
        return int(runtime.scheduler.queue_depth)

    return int(server.run_sync(read))


# ------------------------------------------------------------------ table --


def test_readme_table_defaults_and_env_names_are_the_settings():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| `(SEQINFER_[A-Z_]+)` \| `([^`]*)` \|", readme, re.M)
    table = {name.replace("-", "_"): (env, default) for name, env, default in rows}
    assert set(table) == set(Settings.model_fields), "README table and Settings differ"
    for name, info in Settings.model_fields.items():
        env, default = table[name]
        assert env == f"SEQINFER_{name.upper()}", name
        assert default == str(info.default), (
            f"{name}: README says {default}, Settings {info.default}"
        )


# ---------------------------------------------------------------- batching --


def test_no_batch_exceeds_max_batch_size():
    sizes = BatchSizes()
    with (
        running_server([ALPHA], observer=sizes, max_batch_size=4) as server,
        stub(server.address) as api,
    ):
        sids = [f"s{i}" for i in range(20)]
        for sid in ("first", *sids):
            api.OpenSession(pb.OpenSessionRequest(model="alpha", session_id=sid))
        with gated(server) as gate:
            held = api.Step.future(pb.StepRequest(session_id="first", inputs=ONE))
            gate.wait_entered(1)
            many = api.StepMany.future(
                pb.StepManyRequest(steps=[pb.StepRequest(session_id=s, inputs=ONE) for s in sids])
            )
            wait_until(lambda: _queue_depth(server, "alpha") == 20, what="20 steps queued")
            gate.open()
            assert held.result(60).step == 1
            assert [r.response.step for r in many.result(60).results] == [1] * 20
    # All 20 were ready at once: the cap, and nothing but the cap, split them.
    assert gate.sizes == [1, 4, 4, 4, 4, 4]
    assert sizes.sizes["alpha:1"] == gate.sizes


# ------------------------------------------------------------ default model --


def test_default_model_serves_requests_naming_no_model():
    beta_one = to_tensor(np.ones((1, 6), np.float32))
    with running_server([ALPHA, BETA], default_model="beta") as server, stub(server.address) as api:
        api.Step(pb.StepRequest(session_id="implicit", start=True, inputs=beta_one))
        assert api.GetSession(pb.GetSessionRequest(session_id="implicit")).model == "beta"
        assert api.OpenSession(pb.OpenSessionRequest(session_id="opened")).model == "beta"
        assert api.GetModel(pb.GetModelRequest()).name == "beta"
        state = to_tensor(np.zeros((2, 16), np.float32))
        info = api.ImportState(pb.ImportStateRequest(session_id="imp", state=state, create=True))
        assert info.model == "beta"
        # A request for the default model is checked against the default model.
        code, reason, metadata, _ = _refused(
            lambda: api.Step(pb.StepRequest(session_id="n", start=True, inputs=ONE))
        )
        assert (code, reason, metadata["field"]) == (INVALID, "INVALID_INPUT", "inputs.shape")
    # Unset: the built-in default when it is served, else the first model.
    builtin = make_model("dense", name=DEFAULT_MODEL_NAME, seed=43)
    for models, expected in (([ALPHA, BETA], "alpha"), ([ALPHA, builtin], DEFAULT_MODEL_NAME)):
        with running_server(models) as server, stub(server.address) as api:
            assert api.OpenSession(pb.OpenSessionRequest()).model == expected


def test_a_default_model_that_is_not_served_stops_the_start():
    server = ServerThread(support.test_settings(default_model="gamma"), [ALPHA])
    try:
        with pytest.raises(ModelNotFound, match="gamma"):
            server.start()
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)


# ----------------------------------------------------------------- idle TTL --


def _expired(api: Any, sid: str) -> bool:
    try:
        api.GetSession(pb.GetSessionRequest(session_id=sid))
    except grpc.RpcError as error:
        assert error_reason(error)[1] == "SESSION_EXPIRED", error.details()
        return True
    return False


def test_default_idle_ttl_applies_to_sessions_given_none():
    with (
        running_server([ALPHA], idle_ttl_seconds=0.3, sweep_interval_seconds=0.02) as server,
        stub(server.address) as api,
    ):
        forever = api.OpenSession(pb.OpenSessionRequest(session_id="forever", idle_ttl_seconds=0))
        opened = api.OpenSession(pb.OpenSessionRequest(session_id="opened"))
        api.Step(pb.StepRequest(session_id="started", start=True, inputs=ONE))
        started = api.GetSession(pb.GetSessionRequest(session_id="started"))
        assert (forever.idle_ttl_seconds, opened.idle_ttl_seconds) == (0, 0.3)
        assert started.idle_ttl_seconds == 0.3
        wait_until(lambda: _expired(api, "opened") and _expired(api, "started"), what="expiry")
        assert api.GetSession(pb.GetSessionRequest(session_id="forever")).step == 0


def test_idle_ttl_zero_means_sessions_never_expire():
    with (
        running_server([ALPHA], idle_ttl_seconds=0, sweep_interval_seconds=0.02) as server,
        stub(server.address) as api,
    ):
        never = api.OpenSession(pb.OpenSessionRequest(session_id="never"))
        assert never.idle_ttl_seconds == 0
        api.OpenSession(pb.OpenSessionRequest(session_id="short", idle_ttl_seconds=0.1))
        # "never" has been idle longer than "short" when "short" is swept.
        wait_until(lambda: _expired(api, "short"), what="the short session to expire")
        assert api.GetSession(pb.GetSessionRequest(session_id="never")).session_id == "never"


# --------------------------------------------------------- non-finite inputs --


def test_allow_non_finite_inputs_accepts_nan_and_inf_and_keeps_them_to_their_session():
    x = np.random.default_rng(44).standard_normal((2, 8)).astype(np.float32)
    bad = x.copy()
    bad[0, 3], bad[1, 0] = np.nan, np.inf
    with (
        running_server([ALPHA], allow_non_finite_inputs=True) as server,
        stub(server.address) as api,
    ):
        for sid in ("nan", "clean"):
            api.OpenSession(pb.OpenSessionRequest(session_id=sid))
        reply = api.StepMany(
            pb.StepManyRequest(
                steps=[
                    pb.StepRequest(
                        session_id=sid, inputs=to_tensor(v), output_mode=pb.OUTPUT_MODE_ALL
                    )
                    for sid, v in (("nan", bad), ("clean", x))
                ]
            )
        )
        got_bad, got_clean = (np.frombuffer(r.response.outputs.data, "<f4") for r in reply.results)
        np.testing.assert_allclose(got_bad.reshape(2, -1), reference_run(ALPHA, bad)[0], atol=1e-5)
        assert np.isnan(got_bad).any()
        # Batched together, the NaN stays in its own row.
        np.testing.assert_allclose(got_clean.reshape(2, -1), reference_run(ALPHA, x)[0], atol=1e-5)
        # The setting is about inputs: a hidden state must still be finite.
        nan_state = to_tensor(np.full((2, 16), np.nan, np.float32))
        code, _, metadata, _ = _refused(
            lambda: api.OpenSession(pb.OpenSessionRequest(initial_state=nan_state))
        )
        assert (code, metadata["field"]) == (INVALID, "initial_state.data")
    with running_server([ALPHA]) as server, stub(server.address) as api:
        step = pb.StepRequest(session_id="n", start=True, inputs=to_tensor(bad))
        assert _refused(lambda: api.Step(step))[2]["field"] == "inputs.data"


# ----------------------------------------------------------- session ids --


def test_custom_max_session_id_bytes_counts_bytes():
    state = to_tensor(np.zeros((2, 16), np.float32))
    with running_server([ALPHA], max_session_id_bytes=8) as server, stub(server.address) as api:
        assert api.OpenSession(pb.OpenSessionRequest(session_id="abcdefgh")).session_id
        assert api.OpenSession(pb.OpenSessionRequest(session_id="ééée")).session_id  # 7 bytes
        for field, call in (
            ("session_id", lambda: api.OpenSession(pb.OpenSessionRequest(session_id="abcdefghi"))),
            ("session_id", lambda: api.OpenSession(pb.OpenSessionRequest(session_id="éééée"))),
            (
                "session_id",
                lambda: api.Step(pb.StepRequest(session_id="s" * 9, start=True, inputs=ONE)),
            ),
            ("session_id", lambda: api.GetSession(pb.GetSessionRequest(session_id="g" * 9))),
            (
                "new_session_id",
                lambda: api.ForkSession(
                    pb.ForkSessionRequest(session_id="abcdefgh", new_session_id="f" * 9)
                ),
            ),
            (
                "session_id",
                lambda: api.ImportState(
                    pb.ImportStateRequest(session_id="i" * 9, state=state, create=True)
                ),
            ),
        ):
            code, reason, metadata, details = _refused(call)
            assert (code, reason, metadata["field"]) == (INVALID, "INVALID_INPUT", field)
            assert "the limit is 8" in details, details
        assert sum(m.open_sessions for m in api.ListModels(pb.ListModelsRequest()).models) == 2


# -------------------------------------------------------- per-model limits --


def test_max_sessions_and_max_queue_size_apply_to_each_model_separately():
    beta_one = to_tensor(np.ones((1, 6), np.float32))
    ones = {"alpha": ONE, "beta": beta_one}
    with (
        running_server([ALPHA, BETA], max_sessions=2, max_queue_size=1) as server,
        stub(server.address) as api,
    ):
        for model in ("alpha", "beta"):
            for i in range(2):
                api.OpenSession(pb.OpenSessionRequest(model=model, session_id=f"{model}{i}"))
        for model in ("alpha", "beta"):
            code, reason, _, _ = _refused(
                lambda m=model: api.OpenSession(pb.OpenSessionRequest(model=m))
            )
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_FULL")
        with gated(server) as gate:
            held = [
                api.Step.future(pb.StepRequest(session_id=f"{m}0", inputs=ones[m])) for m in ones
            ]
            gate.wait_entered(2)  # one batch in each model's engine
            queued = api.Step.future(pb.StepRequest(session_id="alpha1", inputs=ONE))
            wait_until(lambda: _queue_depth(server, "alpha") == 1, what="alpha's queue full")
            code, reason, _, _ = _refused(
                lambda: api.Step(pb.StepRequest(session_id="alpha1", inputs=ONE))
            )
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
            # Beta's queue is its own: still room for one.
            other = api.Step.future(pb.StepRequest(session_id="beta1", inputs=beta_one))
            wait_until(lambda: _queue_depth(server, "beta") == 1, what="beta's step queued")
            gate.open()
            assert [f.result(60).step for f in (*held, queued, other)] == [1, 1, 1, 1]
