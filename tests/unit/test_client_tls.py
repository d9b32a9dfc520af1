"""The client's TLS, mutual TLS and bearer token, against a stand-in TLS server.

See tests/unit/client_tls_support.py for the server and the certificates
(made fresh for each test module, never read from disk).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import typer
from typer.testing import CliRunner

from seqinfer.cli import client_cmds
from seqinfer.cli.common import TYPER_SETTINGS
from seqinfer.client import AsyncClient, Client, RetryPolicy, SeqinferError, Unavailable
from seqinfer.client.security import Security
from tests.unit.client_tls_support import CLIENT_CN, Pki, standin_server

TOKEN = "s3cr3t-token-value-42"
NO_RETRY = RetryPolicy.disabled()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.make()


def test_tls_with_the_right_ca_works_sync_and_async(pki: Pki) -> None:
    with standin_server(pki) as (address, seen):
        with Client(address, root_certificates=pki.ca.cert, timeout=10) as client:
            assert [m.name for m in client.list_models()] == ["tls-model"]
        assert seen.authorizations("ListModels") == [None]  # no token given, none sent

        async def run() -> list[str]:
            async with AsyncClient(address, tls=True, root_certificates=pki.ca.cert) as c:
                return [m.name for m in await c.list_models(timeout=10)]

        assert asyncio.run(run()) == ["tls-model"]


def test_a_wrong_ca_fails_with_a_clear_error(pki: Pki) -> None:
    with standin_server(pki) as (address, seen):
        with Client(address, root_certificates=pki.other_ca.cert, retry=NO_RETRY) as client:
            with pytest.raises(Unavailable) as caught:
                client.list_models(timeout=10)
        text = str(caught.value).lower()
        assert "handshake" in text or "certificate" in text, text
        assert seen.calls == []  # never got past the handshake


def test_a_plaintext_client_cannot_talk_to_a_tls_server(pki: Pki) -> None:
    with standin_server(pki) as (address, _seen):
        with Client(address, retry=NO_RETRY) as client, pytest.raises(Unavailable):
            client.list_models(timeout=10)


def test_mutual_tls_presents_the_client_certificate(pki: Pki) -> None:
    with standin_server(pki, require_client_cert=True) as (address, seen):
        with Client(
            address,
            root_certificates=pki.ca.cert,
            client_certificate=pki.client.cert,
            client_key=pki.client.key,
            timeout=10,
        ) as client:
            client.list_models()
        assert [cn for _, _, cn in seen.calls] == [CLIENT_CN]
        # The server demands a certificate: without one the handshake fails.
        with Client(address, root_certificates=pki.ca.cert, retry=NO_RETRY) as client:
            with pytest.raises(Unavailable):
                client.list_models(timeout=10)


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plaintext"])
def test_the_token_arrives_on_unary_and_streaming_calls(pki: Pki, secure: bool) -> None:
    expected = f"Bearer {TOKEN}"
    with standin_server(pki if secure else None) as (address, seen):
        ca = pki.ca.cert if secure else None
        with Client(address, root_certificates=ca, token=TOKEN, timeout=10) as client:
            client.list_models()
            with client.stream() as stream:
                out = stream.step("s", [1.0, 2.0], expected_step=3)
            assert out.step == 4
        assert seen.authorizations("ListModels") == [expected]
        assert seen.authorizations("StreamSteps") == [expected]

        async def run() -> int:
            async with AsyncClient(address, root_certificates=ca, token=TOKEN, timeout=10) as c:
                await c.list_models()
                async with c.stream() as s:
                    return (await s.step("s", [1.0], expected_step=0)).step

        assert asyncio.run(run()) == 1
        assert seen.authorizations("ListModels") == [expected, expected]
        assert seen.authorizations("StreamSteps") == [expected, expected]


def test_the_token_never_shows_in_errors_or_reprs(pki: Pki) -> None:
    with standin_server(pki) as (address, seen):
        with Client(address, root_certificates=pki.ca.cert, token=TOKEN, retry=NO_RETRY) as c:
            with pytest.raises(SeqinferError) as refused:
                c.get_model("nope", timeout=10)
            assert seen.authorizations("GetModel") == [f"Bearer {TOKEN}"]  # it was sent
            texts = [str(refused.value), repr(refused.value), repr(c), repr(c._security)]
        with Client(address, root_certificates=pki.other_ca.cert, token=TOKEN, retry=NO_RETRY) as c:
            with pytest.raises(SeqinferError) as unreachable:
                c.list_models(timeout=10)
            texts += [str(unreachable.value), repr(unreachable.value), repr(c)]
    with Client(address, token=TOKEN) as plain:  # plaintext: the token is call metadata
        texts.append(repr(plain))
    assert "<set>" in repr(plain)
    for text in texts:
        assert TOKEN not in text, text


def test_inconsistent_security_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="client_key"):
        Security(client_certificate=b"pem")
    with pytest.raises(ValueError, match="not both"):
        Security(channel_credentials=object(), root_certificates=b"pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Security(token="")
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(ValueError, match="channel="):
            Client(channel=channel, tls=True)
    assert Security(root_certificates=b"pem").secure  # a CA implies TLS
    assert not Security(token="t").secure


def test_cli_options_reach_the_client(pki: Pki, tmp_path: Path) -> None:
    app = typer.Typer(**TYPER_SETTINGS)
    client_cmds.register(app)
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key"
    ca.write_bytes(pki.ca.cert)
    cert.write_bytes(pki.client.cert)
    key.write_bytes(pki.client.key)
    runner = CliRunner()
    with standin_server(pki, require_client_cert=True) as (address, seen):
        args = ["models", "-a", address, "--ca", str(ca), "--cert", str(cert), "--key", str(key)]
        done = runner.invoke(app, [*args, "--token", TOKEN])
        assert done.exit_code == 0, done.output
        assert "tls-model" in done.stdout
        done = runner.invoke(app, [*args, "-o", "json"], env={"SEQINFER_TOKEN": "from-env"})
        assert done.exit_code == 0, done.output
        assert seen.authorizations("ListModels") == [f"Bearer {TOKEN}", "Bearer from-env"]
        assert [cn for _, _, cn in seen.calls] == [CLIENT_CN, CLIENT_CN]
        # A wrong CA is a server-side failure (exit 1) that says why.
        other = tmp_path / "other.pem"
        other.write_bytes(pki.other_ca.cert)
        done = runner.invoke(app, ["models", "-a", address, "--ca", str(other), "--timeout", "5"])
        assert done.exit_code == 1
        assert "error: UNAVAILABLE" in done.output
    missing = runner.invoke(app, ["models", "--tls", "--ca", str(tmp_path / "none.pem")])
    assert missing.exit_code == 2
    assert "none.pem" in missing.output
    half = runner.invoke(app, ["models", "--cert", str(cert)])
    assert half.exit_code == 2
    assert "client_key" in half.output
