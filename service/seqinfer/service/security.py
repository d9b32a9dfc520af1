"""What a server exposed beyond loopback needs: TLS (optionally mutual) and its token table.

Both are read once at start-up, before any model is loaded, so a missing
certificate or a malformed token file stops the server at once with the
file (and line) named, not after minutes of loading. With a certificate the
server listens with TLS only; there is no plaintext port beside it. The
metrics endpoint stays plain HTTP: bind it to loopback (its default) or to
a network only the scraper reaches (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from seqinfer.service.config import Settings
from seqinfer.service.tenants import TokenFileError, TokenTable


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"{what} {path}: cannot read: {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for a plaintext server."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read(settings.tls_cert_file, "tls_cert_file")
    key = _read(settings.tls_key_file, "tls_key_file")
    client_ca = (
        _read(settings.tls_client_ca_file, "tls_client_ca_file")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=settings.tls_require_client_cert,
    )


def token_table(settings: Settings) -> TokenTable | None:
    return None if settings.auth_token_file is None else TokenTable.load(settings.auth_token_file)
