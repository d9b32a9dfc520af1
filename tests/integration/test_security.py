"""TLS, mutual TLS, bearer tokens and tenant isolation, over real gRPC on loopback.

Certificates are made per test (``tests.certs``). Every refusal is checked
for the code and reason a client can act on. Isolation is checked the way
an attacker would probe it: another tenant's session must look exactly like
an id that never existed, in code, reason, message and metadata, for every
RPC that names a session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqinfer.service.tenants import new_token, token_hash
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.certs import Authority
from tests.support import error_reason, make_model, running_server, to_tensor

MODEL = make_model("dense", name="m", seed=21)
X = to_tensor(np.ones((1, 8), np.float32))


# --------------------------------------------------------------------- TLS --


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = Authority()
    server_cert, server_key = ca.issue("seqinfer", server=True).write(tmp_path, "server")
    client = ca.issue("client-1", server=False)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    return {
        "ca": ca.pem,
        "ca_file": tmp_path / "ca.crt",
        "server": {"tls_cert_file": server_cert, "tls_key_file": server_key},
        "client": client,
        "stranger": Authority("another CA"),
    }


def _tls_call(address: str, **credentials: Any) -> pb.ListModelsResponse:
    creds = grpc.ssl_channel_credentials(**credentials)
    with grpc.secure_channel(address, creds) as channel:
        return pb_grpc.SeqinferStub(channel).ListModels(pb.ListModelsRequest(), timeout=20)


def test_tls_serves_only_tls_to_clients_that_trust_its_ca(pki):
    with running_server([MODEL], **pki["server"]) as server:
        assert [m.name for m in _tls_call(server.address, root_certificates=pki["ca"]).models]
        with (
            grpc.insecure_channel(server.address) as plain,
            pytest.raises(grpc.RpcError) as refused,
        ):
            pb_grpc.SeqinferStub(plain).ListModels(pb.ListModelsRequest(), timeout=20)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as untrusted:
            _tls_call(server.address, root_certificates=pki["stranger"].pem)
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(pki):
    settings = {
        **pki["server"],
        "tls_client_ca_file": pki["ca_file"],
        "tls_require_client_cert": True,
    }
    client, stranger = pki["client"], pki["stranger"].issue("intruder", server=False)
    with running_server([MODEL], **settings) as server:
        reply = _tls_call(
            server.address,
            root_certificates=pki["ca"],
            private_key=client.key,
            certificate_chain=client.cert,
        )
        assert reply.models
        for who in ({}, {"private_key": stranger.key, "certificate_chain": stranger.cert}):
            with pytest.raises(grpc.RpcError) as refused:
                _tls_call(server.address, root_certificates=pki["ca"], **who)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ tokens --


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, Any]:
    alice, bob, carol = new_token(), new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(
        "# sha256 of the token, tenant, quotas\n"
        f"{token_hash(alice)} alice\n"
        f"{token_hash(bob)}   bob    max_sessions=2\n"
        f"{token_hash(carol)} carol  steps_per_second=0.001\n"
    )
    return {"file": path, "alice": alice, "bob": bob, "carol": carol}


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_calls_without_a_valid_token_are_unauthenticated_and_health_stays_open(tokens):
    with running_server([MODEL], auth_token_file=tokens["file"]) as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            for metadata in ((), _as("not-a-token"), (("authorization", "Basic abc"),)):
                with pytest.raises(grpc.RpcError) as refused:
                    api.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=20)
                code, reason, _ = error_reason(refused.value)
                assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
                assert tokens["alice"] not in refused.value.details()
            stream = api.StreamSteps(iter([pb.StepRequest(session_id="x", inputs=X)]))
            with pytest.raises(grpc.RpcError) as refused_stream:
                list(stream)
            assert refused_stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert api.ListModels(pb.ListModelsRequest(), metadata=_as(tokens["alice"])).models
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def _failure(call: Any) -> tuple[Any, str, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    code, reason, metadata = error_reason(error.value)
    return code, reason, error.value.details(), metadata


def test_another_tenants_session_is_exactly_an_id_that_never_existed(tokens):
    alice, bob = _as(tokens["alice"]), _as(tokens["bob"])
    with running_server([MODEL], auth_token_file=tokens["file"]) as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="secret"), metadata=alice)
            api.Step(pb.StepRequest(session_id="secret", inputs=X), metadata=alice)
            state = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 16], data=b"\0" * 128)

            def probes(session_id: str) -> list[Any]:
                return [
                    lambda: api.GetSession(
                        pb.GetSessionRequest(session_id=session_id), metadata=bob
                    ),
                    lambda: api.Step(pb.StepRequest(session_id=session_id, inputs=X), metadata=bob),
                    lambda: api.ForkSession(
                        pb.ForkSessionRequest(session_id=session_id), metadata=bob
                    ),
                    lambda: api.ExportState(
                        pb.ExportStateRequest(session_id=session_id), metadata=bob
                    ),
                    lambda: api.ImportState(
                        pb.ImportStateRequest(session_id=session_id, state=state), metadata=bob
                    ),
                    lambda: api.CloseSession(
                        pb.CloseSessionRequest(session_id=session_id), metadata=bob
                    ),
                ]

            for theirs, never in zip(probes("secret"), probes("nosuch"), strict=True):
                code, reason, message, metadata = _failure(theirs)
                assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
                expected = _failure(never)
                assert (code, reason) == expected[:2]
                assert message.replace("secret", "nosuch") == expected[2]
                assert {k: v.replace("secret", "nosuch") for k, v in metadata.items()} == expected[
                    3
                ]
            many = api.StepMany(
                pb.StepManyRequest(steps=[pb.StepRequest(session_id="secret", inputs=X)]),
                metadata=bob,
            )
            assert many.results[0].WhichOneof("outcome") == "error"
            # Bob may use the same id for a session of his own; Alice's is untouched.
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="secret"), metadata=bob)
            mine = api.Step(pb.StepRequest(session_id="secret", inputs=X), metadata=bob)
            assert mine.step == 1
            got = api.GetSession(pb.GetSessionRequest(session_id="secret"), metadata=alice)
            assert got.step == 1
            api.CloseSession(pb.CloseSessionRequest(session_id="secret"), metadata=bob)
            assert (
                api.GetSession(pb.GetSessionRequest(session_id="secret"), metadata=alice).step == 1
            )


def test_tenant_quotas_refuse_with_tenant_quota_and_apply_nothing(tokens):
    bob, carol = _as(tokens["bob"]), _as(tokens["carol"])
    with running_server([MODEL], auth_token_file=tokens["file"]) as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            for sid in ("b1", "b2"):
                api.OpenSession(pb.OpenSessionRequest(model="m", session_id=sid), metadata=bob)
            for third in (
                lambda: api.OpenSession(
                    pb.OpenSessionRequest(model="m", session_id="b3"), metadata=bob
                ),
                lambda: api.Step(
                    pb.StepRequest(session_id="b3", start=True, model="m", inputs=X), metadata=bob
                ),
                lambda: api.ForkSession(pb.ForkSessionRequest(session_id="b1"), metadata=bob),
            ):
                code, reason, _, metadata = _failure(third)
                assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TENANT_QUOTA")
                assert metadata["quota"] == "max_sessions" and metadata["limit"] == "2"
            api.CloseSession(pb.CloseSessionRequest(session_id="b1"), metadata=bob)
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="b3"), metadata=bob)

            # 0.001 steps per second: the first step spends more than a full
            # bucket, the next must wait far longer than this test runs.
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="c"), metadata=carol)
            assert api.Step(pb.StepRequest(session_id="c", inputs=X), metadata=carol).step == 1
            code, reason, _, metadata = _failure(
                lambda: api.Step(pb.StepRequest(session_id="c", inputs=X), metadata=carol)
            )
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TENANT_QUOTA")
            assert metadata["quota"] == "steps_per_second"
            assert float(metadata["retry_after_seconds"]) > 100
            assert api.GetSession(pb.GetSessionRequest(session_id="c"), metadata=carol).step == 1
            # Bob's steps are not slowed by Carol's quota.
            assert api.Step(pb.StepRequest(session_id="b2", inputs=X), metadata=bob).step == 1


# ------------------------------------------------------ model allow-list --


def test_a_tenant_sees_and_uses_only_its_allowed_models(tmp_path):
    alice, bob = new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(f"{token_hash(alice)} alice models=m\n{token_hash(bob)} bob\n")
    other = make_model("dense", name="other", seed=22)
    with running_server([MODEL, other], auth_token_file=path, default_model="m") as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            mine, all_ = _as(alice), _as(bob)
            listed = api.ListModels(pb.ListModelsRequest(), metadata=mine).models
            assert [m.name for m in listed] == ["m"]
            everything = api.ListModels(pb.ListModelsRequest(), metadata=all_).models
            assert sorted(m.name for m in everything) == ["m", "other"]
            state = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 16], data=b"\0" * 128)

            def probes(model: str) -> list[Any]:
                return [
                    lambda: api.GetModel(pb.GetModelRequest(name=model), metadata=mine),
                    lambda: api.OpenSession(pb.OpenSessionRequest(model=model), metadata=mine),
                    lambda: api.Step(
                        pb.StepRequest(session_id="s", start=True, model=model, inputs=X),
                        metadata=mine,
                    ),
                    lambda: api.ImportState(
                        pb.ImportStateRequest(
                            session_id="i", model=model, create=True, state=state
                        ),
                        metadata=mine,
                    ),
                ]

            for forbidden, unknown in zip(probes("other"), probes("nosuch"), strict=True):
                code, reason, message, metadata = _failure(forbidden)
                assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
                expected = _failure(unknown)
                assert message.replace("other", "nosuch") == expected[2]
                assert "other" not in message.replace("no model named 'other'", "")
                assert {k: v.replace("other", "nosuch") for k, v in metadata.items()} == expected[3]
                assert (code, reason) == expected[:2]
            many = api.StepMany(
                pb.StepManyRequest(
                    steps=[pb.StepRequest(session_id="t", start=True, model="other", inputs=X)]
                ),
                metadata=mine,
            )
            error = many.results[0].error
            assert error.code == grpc.StatusCode.NOT_FOUND.value[0]
            assert error.message.startswith("no model named 'other'; served: m")
            # The allowed model works for Alice, the other one for Bob.
            assert (
                api.Step(
                    pb.StepRequest(session_id="s", start=True, model="m", inputs=X), metadata=mine
                ).step
                == 1
            )
            assert api.OpenSession(pb.OpenSessionRequest(model="other"), metadata=all_).session_id


# ----------------------------------------------------------- tenant label --


def _scrape(observer: Any) -> str:
    from prometheus_client import generate_latest

    from seqinfer.service.metrics.exporter import build_registry

    return generate_latest(build_registry(observer, list, version="test")).decode()


@pytest.mark.parametrize("label", [False, True])
def test_metrics_carry_a_tenant_label_only_when_allowed_and_never_a_token(tokens, label):
    from seqinfer.service.metrics import PrometheusObserver

    observer = PrometheusObserver()
    alice, carol = _as(tokens["alice"]), _as(tokens["carol"])
    settings = {"auth_token_file": tokens["file"], "metrics_tenant_label": label}
    with running_server([MODEL], observer, **settings) as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="sid-a"), metadata=alice)
            api.Step(pb.StepRequest(session_id="sid-a", inputs=X), metadata=alice)
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="sid-c"), metadata=carol)
            api.Step(pb.StepRequest(session_id="sid-c", inputs=X), metadata=carol)
            _failure(lambda: api.Step(pb.StepRequest(session_id="sid-c", inputs=X), metadata=carol))
            _failure(lambda: api.ListModels(pb.ListModelsRequest(), metadata=_as("wrong")))
    text = _scrape(observer)
    series = [line for line in text.splitlines() if line.startswith("seqinfer_tenant_requests")]
    for secret in (tokens["alice"], tokens["carol"], "wrong", "sid-a", "sid-c"):
        assert secret not in text
    if not label:
        assert series == []
        assert 'tenant="' not in text
        return
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in series}
    assert counts == {
        'seqinfer_tenant_requests_total{code="OK",method="OpenSession",tenant="alice"}': 1.0,
        'seqinfer_tenant_requests_total{code="OK",method="Step",tenant="alice"}': 1.0,
        'seqinfer_tenant_requests_total{code="OK",method="OpenSession",tenant="carol"}': 1.0,
        'seqinfer_tenant_requests_total{code="OK",method="Step",tenant="carol"}': 1.0,
        'seqinfer_tenant_requests_total{code="RESOURCE_EXHAUSTED",method="Step",tenant="carol"}': (
            1.0
        ),
    }


def test_logs_never_print_a_token(tokens, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    stranger = new_token()
    with running_server([MODEL], auth_token_file=tokens["file"], log_level="DEBUG") as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            alice = _as(tokens["alice"])
            api.OpenSession(pb.OpenSessionRequest(model="m", session_id="s"), metadata=alice)
            api.Step(pb.StepRequest(session_id="s", inputs=X), metadata=alice)
            _failure(
                lambda: api.Step(pb.StepRequest(session_id="nosuch", inputs=X), metadata=alice)
            )
            for metadata in (_as(stranger), (("authorization", f"Basic {stranger}"),)):
                _failure(lambda m=metadata: api.ListModels(pb.ListModelsRequest(), metadata=m))
            stream = api.StreamSteps(iter([pb.StepRequest(session_id="s")]), metadata=_as(stranger))
            with pytest.raises(grpc.RpcError):
                list(stream)
    assert any("serving" in r.getMessage() for r in caplog.records)  # the capture works
    for secret in (tokens["alice"], stranger, token_hash(tokens["alice"])):
        assert secret not in caplog.text


# --------------------------------------------------------- metrics TLS --


def test_the_metrics_endpoint_serves_https_only_with_its_certificate(pki, tmp_path):
    import ssl
    import urllib.error
    import urllib.request

    from tests.serve_process import free_port

    port = free_port()
    cert, key = pki["server"]["tls_cert_file"], pki["server"]["tls_key_file"]
    settings = {"metrics_port": port, "metrics_tls_cert_file": cert, "metrics_tls_key_file": key}
    trusted = ssl.create_default_context(cadata=pki["ca"].decode())
    stranger = ssl.create_default_context(cadata=pki["stranger"].pem.decode())
    with running_server([MODEL], **settings):
        url = f"https://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, context=trusted, timeout=20) as reply:
            assert reply.status == 200 and b"seqinfer_build_info" in reply.read()
        with pytest.raises(urllib.error.URLError) as untrusted:
            urllib.request.urlopen(url, context=stranger, timeout=20)
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
        # Plain HTTP to the TLS port gets no metrics.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read()
