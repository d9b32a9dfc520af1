"""The TLS files' checks, without a server: what a start or a SIGHUP reload refuses, and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from seqinfer.service.config import Settings
from seqinfer.service.security import ServerTls, certificate_configuration, metrics_tls
from seqinfer.service.tenants import TokenFileError
from tests.certs import Authority


def _settings(tmp_path: Path, **extra: object) -> Settings:
    cert, key = Authority().issue("seqinfer", server=True).write(tmp_path, "server")
    return Settings(tls_cert_file=cert, tls_key_file=key, **extra)


def test_a_key_that_does_not_match_the_certificate_is_refused_with_the_files_named(tmp_path):
    settings = _settings(tmp_path)
    Authority().issue("other", server=True).write(tmp_path, "other")
    (tmp_path / "other.key").replace(tmp_path / "server.key")
    with pytest.raises(TokenFileError, match=r"server\.crt.*server\.key"):
        certificate_configuration(settings)


def test_a_client_ca_that_is_not_pem_is_refused(tmp_path):
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    settings = _settings(tmp_path, tls_client_ca_file=tmp_path / "ca.crt")
    with pytest.raises(TokenFileError, match="tls_client_ca_file"):
        certificate_configuration(settings)


def test_a_refused_reload_hands_nothing_to_any_port(tmp_path):
    tls = ServerTls(_settings(tmp_path))
    ports = [tls.credentials(), tls.credentials()]
    assert len(ports) == 2
    (tmp_path / "server.crt").write_text("garbage\n")
    assert tls.reload() is False
    assert tls.reloads == 0
    Authority().issue("seqinfer", server=True).write(tmp_path, "server")
    assert tls.reload() is True
    assert tls.reloads == 1
    assert all(port.queued is not None for port in tls._ports)


def test_metrics_tls_needs_both_files_and_a_matching_pair(tmp_path):
    cert, key = Authority().issue("m", server=True).write(tmp_path, "m")
    with pytest.raises(ValidationError, match="go together"):
        Settings(metrics_tls_cert_file=cert)
    assert metrics_tls(Settings()) is None
    assert metrics_tls(Settings(metrics_tls_cert_file=cert, metrics_tls_key_file=key)) is not None
    key.write_text("garbage\n")
    with pytest.raises(TokenFileError, match="metrics_tls_cert_file"):
        metrics_tls(Settings(metrics_tls_cert_file=cert, metrics_tls_key_file=key))
