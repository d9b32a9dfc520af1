"""TLS certificate rotation without a restart: reload on SIGHUP, sessions and open connections kept.

The files are swapped from a certificate of CA 1 to one of CA 2 (a new CA,
so a client can tell which configuration a handshake used). After the
reload a new connection verifies with CA 2 only, the session opened before
still steps from there, and the connection opened before keeps working. A
bad file on reload keeps the old configuration. Client channels use a local
subchannel pool, so a "new connection" is never a reused one.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.certs import Authority
from tests.serve_process import ServeProcess, serve_args
from tests.support import make_model, running_server, to_tensor

MODEL = make_model("dense", name="m", seed=3)
X = to_tensor(np.ones((1, 8), np.float32))
# `serve` with no repository: the built-in default model reads character ids.
CHARS = to_tensor(np.array([65], np.int64))


def _channel(address: str, ca: Authority) -> grpc.Channel:
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=ca.pem),
        options=[("grpc.use_local_subchannel_pool", 1)],
    )


def _step(channel: grpc.Channel, session_id: str) -> int:
    inputs = CHARS if session_id.startswith("chars") else X
    reply = pb_grpc.SeqinferStub(channel).Step(
        pb.StepRequest(session_id=session_id, inputs=inputs), timeout=20
    )
    return int(reply.step)


def _fresh_step(address: str, ca: Authority, session_id: str) -> int | grpc.StatusCode:
    """One step over a brand-new connection trusting only ``ca``: its step, or the failure code."""
    with _channel(address, ca) as channel:
        try:
            return _step(channel, session_id)
        except grpc.RpcError as error:
            return error.code()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    one, two = Authority("CA one"), Authority("CA two")
    cert, key = one.issue("seqinfer", server=True).write(tmp_path, "server")
    return {"one": one, "two": two, "cert": cert, "key": key, "dir": tmp_path}


def _swap(files: dict[str, Any]) -> None:
    pem = files["two"].issue("seqinfer", server=True)
    # A rename, as deployment tools do: a reader never sees half a file.
    new_cert, new_key = pem.write(files["dir"], "incoming")
    new_key.replace(files["key"])
    new_cert.replace(files["cert"])


def test_reload_switches_new_connections_and_keeps_sessions_and_open_ones(files, caplog):
    settings = {"tls_cert_file": files["cert"], "tls_key_file": files["key"]}
    with running_server([MODEL], **settings) as server:
        kept = _channel(server.address, files["one"])
        api = pb_grpc.SeqinferStub(kept)
        api.OpenSession(pb.OpenSessionRequest(model="m", session_id="s"), timeout=20)
        assert _step(kept, "s") == 1

        # A broken file: refused, logged, the old certificate still served.
        good_key = files["key"].read_bytes()
        files["key"].write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
        assert server.run_sync(server.server.reload_certificates) is False
        assert "TLS reload refused" in caplog.text
        assert _fresh_step(server.address, files["one"], "s") == 2
        files["key"].write_bytes(good_key)

        _swap(files)
        assert server.run_sync(server.server.reload_certificates) is True
        assert _fresh_step(server.address, files["two"], "s") == 3
        assert _fresh_step(server.address, files["one"], "s") == grpc.StatusCode.UNAVAILABLE
        assert _step(kept, "s") == 4  # the connection opened before the reload
        kept.close()


@pytest.mark.parametrize("frontends", ["0", "1"])
def test_sighup_reloads_the_served_certificate(files, frontends):
    """Single process, and ``--frontends 1`` (the supervisor forwards SIGHUP)."""
    env = {"SEQINFER_TLS_CERT_FILE": str(files["cert"]), "SEQINFER_TLS_KEY_FILE": str(files["key"])}
    with ServeProcess(serve_args("--frontends", frontends), env=env) as server:
        address = server.address()
        with _channel(address, files["one"]) as kept:
            api = pb_grpc.SeqinferStub(kept)
            api.OpenSession(pb.OpenSessionRequest(session_id="chars"), timeout=20)
            assert _step(kept, "chars") == 1
            _swap(files)
            server.send_signal(signal.SIGHUP)
            steps: list[int | grpc.StatusCode] = []

            def verified_with_ca_two() -> bool:
                steps.append(_fresh_step(address, files["two"], "chars"))
                return isinstance(steps[-1], int)

            server.wait_for(verified_with_ca_two, 60, "a handshake with the CA 2 certificate")
            # Each failed try applied nothing; the one that passed was step 2.
            assert steps[-1] == 2
            assert _step(kept, "chars") == 3
            assert _fresh_step(address, files["one"], "chars") == grpc.StatusCode.UNAVAILABLE
        assert server.process.poll() is None  # SIGHUP did not end it
