"""The token file re-read on SIGHUP: new tokens work, removed ones are refused, quotas follow.

The file is rewritten between calls and the server told to reload (in
process through ``SeqinferServer.reload_tokens``, and with a real SIGHUP to
``seqinfer serve``, single process and ``--frontends 2``). Sessions are
never touched by a reload: a session of a tenant whose token was replaced
is still there for the tenant's new token. A file that does not parse is
refused with its line named in the log, and the old table keeps serving.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqinfer.service.tenants import new_token, token_hash
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.serve_process import ServeProcess, serve_args
from tests.support import error_reason, make_model, running_server, to_tensor

MODEL = make_model("dense", name="m", seed=5)
X = to_tensor(np.ones((1, 8), np.float32))
# `serve` with no repository: the built-in default model reads character ids.
CHARS = to_tensor(np.array([65], np.int64))


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _write(path: Path, lines: list[str]) -> None:
    # A rename, as deployment tools do: a reload never reads half a file.
    incoming = path.with_suffix(".incoming")
    incoming.write_text("".join(f"{line}\n" for line in lines))
    incoming.replace(path)


def _code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_reload_switches_tokens_and_quotas_and_keeps_sessions(tmp_path, caplog):
    alice, bob, carol, alice2 = new_token(), new_token(), new_token(), new_token()
    path = tmp_path / "tokens"
    _write(path, [f"{token_hash(alice)} alice max_sessions=1", f"{token_hash(bob)} bob"])
    with running_server([MODEL], auth_token_file=path) as server:
        reload = server.server.reload_tokens
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)

            def open_session(token: str, sid: str) -> None:
                request = pb.OpenSessionRequest(model="m", session_id=sid)
                api.OpenSession(request, metadata=_as(token), timeout=20)

            def step(token: str, sid: str) -> int:
                request = pb.StepRequest(session_id=sid, inputs=X)
                return int(api.Step(request, metadata=_as(token), timeout=20).step)

            open_session(alice, "a1")
            assert step(alice, "a1") == 1
            with pytest.raises(grpc.RpcError) as full:
                open_session(alice, "a2")
            assert error_reason(full.value)[1] == "TENANT_QUOTA"
            assert _code(lambda: open_session(carol, "c1")) == grpc.StatusCode.UNAUTHENTICATED

            # alice's quota raised, bob's token removed, carol's added.
            _write(
                path, [f"{token_hash(alice)} alice max_sessions=2", f"{token_hash(carol)} carol"]
            )
            assert server.run_sync(reload) is True
            open_session(alice, "a2")  # room for a second one now
            assert step(alice, "a1") == 2  # the session from before the reload
            open_session(carol, "c1")
            assert step(carol, "c1") == 1
            with pytest.raises(grpc.RpcError) as removed:
                api.ListModels(pb.ListModelsRequest(), metadata=_as(bob), timeout=20)
            assert removed.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_reason(removed.value)[1] == "UNAUTHENTICATED"

            # A broken file: refused with its line, the old table still answers.
            path.write_text(f"{token_hash(carol)} carol\n{token_hash(bob)[:10]} bob\n")
            assert server.run_sync(reload) is False
            assert "token file reload refused" in caplog.text
            assert "line 2" in caplog.text
            assert step(carol, "c1") == 2
            assert _code(lambda: step(bob, "b")) == grpc.StatusCode.UNAUTHENTICATED

            # alice's token rotated: the old one is refused, the new one finds her
            # sessions (a reload never drops one), and her quota still counts them.
            _write(
                path, [f"{token_hash(alice2)} alice max_sessions=2", f"{token_hash(carol)} carol"]
            )
            assert server.run_sync(reload) is True
            assert _code(lambda: step(alice, "a1")) == grpc.StatusCode.UNAUTHENTICATED
            assert step(alice2, "a1") == 3
            with pytest.raises(grpc.RpcError) as still_full:
                open_session(alice2, "a3")
            assert error_reason(still_full.value)[1] == "TENANT_QUOTA"
    for secret in (alice, bob, carol, alice2):
        assert secret not in caplog.text


def test_reload_updates_the_step_rate_and_the_model_list(tmp_path):
    dave = new_token()
    other = make_model("dense", name="other", seed=6)
    path = tmp_path / "tokens"
    _write(path, [f"{token_hash(dave)} dave steps_per_second=1 models=m"])
    with running_server([MODEL, other], auth_token_file=path, default_model="m") as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            me = _as(dave)
            listed = api.ListModels(pb.ListModelsRequest(), metadata=me, timeout=20)
            assert [m.name for m in listed.models] == ["m"]
            api.Step(pb.StepRequest(session_id="d", inputs=X, start=True), metadata=me, timeout=20)
            with pytest.raises(grpc.RpcError) as slow:
                api.Step(pb.StepRequest(session_id="d", inputs=X), metadata=me, timeout=20)
            assert error_reason(slow.value)[1] == "TENANT_QUOTA"

            _write(path, [f"{token_hash(dave)} dave steps_per_second=100000"])
            assert server.run_sync(server.server.reload_tokens) is True
            reply = api.Step(pb.StepRequest(session_id="d", inputs=X), metadata=me, timeout=20)
            assert reply.step == 2
            listed = api.ListModels(pb.ListModelsRequest(), metadata=me, timeout=20)
            assert sorted(m.name for m in listed.models) == ["m", "other"]


def _addresses(server: ServeProcess, frontends: str) -> list[str]:
    """Every front end's own address (or the one server's): a probe of each must pass."""
    if frontends == "0":
        return [server.address()]
    lines = server.wait_lines("seqinfer: front end ", int(frontends))
    return [f"127.0.0.1:{line.split(' on port ')[1].split()[0]}" for line in lines]


def _list_models(address: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        api = pb_grpc.SeqinferStub(channel)
        return _code(
            lambda: api.ListModels(pb.ListModelsRequest(), metadata=_as(token), timeout=20)
        )


@pytest.mark.parametrize("frontends", ["0", "2"])
def test_sighup_rereads_the_token_file(tmp_path, frontends):
    """A real `seqinfer serve` (under --frontends 2 the supervisor forwards SIGHUP to the
    engine, for quotas, and to every front end, for tokens)."""
    old, new = new_token(), new_token()
    path = tmp_path / "tokens"
    _write(path, [f"{token_hash(old)} acme max_sessions=1"])
    env = {"SEQINFER_AUTH_TOKEN_FILE": str(path)}
    processes = 1 if frontends == "0" else 1 + int(frontends)  # each reads the file
    with ServeProcess(serve_args("--frontends", frontends), env=env) as server:
        address = server.address()
        fronts = _addresses(server, frontends)
        with grpc.insecure_channel(address) as channel:
            api = pb_grpc.SeqinferStub(channel)

            def open_session(token: str, sid: str) -> grpc.StatusCode:
                request = pb.OpenSessionRequest(session_id=sid)
                return _code(lambda: api.OpenSession(request, metadata=_as(token), timeout=20))

            assert open_session(old, "chars-1") == grpc.StatusCode.OK
            assert open_session(old, "chars-2") == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _list_models(address, new) == grpc.StatusCode.UNAUTHENTICATED
            _write(path, [f"{token_hash(new)} acme max_sessions=3"])
            server.send_signal(signal.SIGHUP)

            def reloaded() -> bool:
                return all(
                    _list_models(front, new) == grpc.StatusCode.OK
                    and _list_models(front, old) == grpc.StatusCode.UNAUTHENTICATED
                    for front in fronts
                )

            server.wait_for(reloaded, 60, "every front end: the new token in, the old one out")
            # The engine's quota follows (under --frontends, the engine's own re-read).
            server.wait_for(
                lambda: open_session(new, "chars-2") == grpc.StatusCode.OK,
                60,
                "the raised max_sessions quota",
            )
            step = api.Step(
                pb.StepRequest(session_id="chars-1", inputs=CHARS), metadata=_as(new), timeout=20
            )
            assert step.step == 1  # the session opened before the reload, never touched
            assert open_session(new, "chars-3") == grpc.StatusCode.OK
            assert open_session(new, "chars-4") == grpc.StatusCode.RESOURCE_EXHAUSTED

            # A broken file: every process refuses it, keeps its table, keeps serving.
            path.write_text("not a token line\n")
            server.send_signal(signal.SIGHUP)
            server.wait_for(
                lambda: server.log().count("token file reload refused") == processes,
                60,
                f"the refusal logged by all {processes} processes",
            )
            assert "line 1" in server.log()
            for front in fronts:
                assert _list_models(front, new) == grpc.StatusCode.OK
            assert open_session(new, "chars-4") == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.process.poll() is None
