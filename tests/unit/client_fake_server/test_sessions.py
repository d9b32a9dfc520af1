"""Unary calls through the client: models, typed errors, the session handle.

A handle follows the server's step counter, sends `expected_step` and the
routing header, and closes its session on exit; fork, export and import
carry the counter over.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from seqinfer.client import Client, ModelNotFound, SessionNotFound
from tests.unit.client_fake_server.fake_seqinfer import FakeSeqinfer


def test_models_and_typed_errors(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    (model,) = client.list_models()
    assert (model.name, model.input_kind, model.output_kind, model.dtype) == (
        "toy",
        "dense",
        "values",
        "float32",
    )
    assert client.get_model("toy").input_size == 3
    with pytest.raises(ModelNotFound) as info:
        client.get_model("nope")
    assert info.value.reason == "MODEL_NOT_FOUND" and info.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(SessionNotFound):
        client.get_session("missing")
    # Every call carried the client's metadata.
    assert all(("x-test", "yes") in md for md in fake[0].script.metadata)


def test_session_context_manager_tracks_counter_and_closes(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    with client.session("toy") as s:
        assert s.session_id in servicer.sessions
        out = s.step(np.ones((4, 3)), output_mode="all", return_state=True)
        assert out.outputs is not None and out.outputs.shape == (4, 3)
        assert out.state is not None and out.state.tolist() == [[4.0]]
        assert s.step_count == 4
        np.testing.assert_array_equal(s([0.5, 1.0, 1.5]), [1.0, 2.0, 3.0])  # [F] -> [1, F]
        assert s.step_count == 5
    assert s.session_id not in servicer.sessions
    steps = servicer.seen("Step")
    assert [r.expected_step for r in steps] == [0, 4]
    assert len({r.request_id for r in steps}) == 2
    # Session-scoped calls carry the routing header.
    assert any(("x-session-id", s.session_id) in md for md in servicer.script.metadata)


def test_exit_swallows_an_already_gone_session(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    with client.session("toy", "gone") as s:
        client.close_session("gone")
    assert s.closed


def test_fork_export_import(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    s = client.open_session("toy", "src")
    s.step(np.ones((2, 3)))
    f = s.fork("copy")
    assert f.session_id == "copy" and f.step_count == 2
    state, info = client.export_state("copy")
    assert state.tolist() == [[2.0]] and info.step == 2
    info = client.import_state("new", state, create=True, model="toy", step=7)
    assert info.step == 7
    assert client.attach("new").step_count == 7
    assert client.close_session("new") == 7
