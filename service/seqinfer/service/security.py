"""What a server exposed beyond loopback needs: TLS (mutual or not, reloadable) and its tokens.

Both are read at start-up, before any model is loaded, so a missing
certificate or a malformed token file stops the server at once with the
file (and line) named, not after minutes of loading. Both are read again on
SIGHUP (``ServerTls.reload``, ``reload_token_table``), where a bad file is
refused with a log line and the running configuration stays. With a certificate the
server listens with TLS only; there is no plaintext port beside it.

Certificate rotation without a restart (``ServerTls.reload``, on SIGHUP):
the port is bound with grpc's dynamic server credentials, whose fetcher
gRPC calls at each new TLS handshake. ``reload`` re-reads the certificate,
key and client CA files and checks them with the ``ssl`` module (the PEM
parses, the key matches the certificate) *before* handing them over; a bad
file leaves the running configuration in place and says why in the log.
Connections already open keep the session keys they negotiated, and
sessions live in the engine, not in connections: nothing is dropped.
The fetcher runs on a gRPC core thread, so it only takes what ``reload``
prepared (one attribute swap under the GIL); it never reads a file. gRPC
keeps one configuration per bound port and asks each port's fetcher on its
own, so every port (a front end binds two) has credentials of its own.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc

from seqinfer.service.config import Settings
from seqinfer.service.tenants import TokenFileError, TokenTable

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"{what} {path}: cannot read: {exc.strerror}") from exc


def _check(settings: Settings) -> None:
    """Raise TokenFileError naming the file if the PEM files do not make a TLS server."""
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TokenFileError(
            f"tls_cert_file {settings.tls_cert_file} / tls_key_file {settings.tls_key_file}: "
            f"not a PEM certificate chain and its private key: {exc}"
        ) from None
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TokenFileError(
                f"tls_client_ca_file {settings.tls_client_ca_file}: not a PEM CA bundle: {exc}"
            ) from None


def certificate_configuration(settings: Settings) -> grpc.ServerCertificateConfiguration:
    """The files named by the settings, checked, as one gRPC certificate configuration."""
    _check(settings)
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    cert = _read(settings.tls_cert_file, "tls_cert_file")
    key = _read(settings.tls_key_file, "tls_key_file")
    client_ca = (
        _read(settings.tls_client_ca_file, "tls_client_ca_file")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class _Port:
    """One bound port's credentials and the configuration its next handshake takes.

    gRPC keeps a configuration per port (per security connector), and the
    fetcher cannot tell which port calls it, so each port gets credentials,
    and a slot, of its own: a reload reaches every port.
    """

    __slots__ = ("credentials", "queued")

    def __init__(self, initial: grpc.ServerCertificateConfiguration, require: bool) -> None:
        self.queued: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=require
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each handshake: None keeps the current configuration.
        queued, self.queued = self.queued, None
        return queued


class ServerTls:
    """The server's TLS: credentials for each port, and what its next handshakes use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._current = certificate_configuration(settings)
        self._ports: list[_Port] = []
        self.reloads = 0  # configurations handed to gRPC since start

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one more port, serving the current configuration."""
        port = _Port(self._current, self.settings.tls_require_client_cert)
        self._ports.append(port)
        return port.credentials

    def reload(self) -> bool:
        """Re-read the files; the next handshakes use them. False (logged) keeps the old ones."""
        try:
            configuration = certificate_configuration(self.settings)
        except TokenFileError as exc:
            log.error("TLS reload refused, still serving the previous certificate: %s", exc)
            return False
        self._current = configuration
        for port in self._ports:
            port.queued = configuration
        self.reloads += 1
        log.info("TLS reload: new connections use %s", self.settings.tls_cert_file)
        return True


def metrics_tls(settings: Settings) -> ssl.SSLContext | None:
    """The /metrics endpoint's TLS context, or None for plain HTTP (loopback by default)."""
    if settings.metrics_tls_cert_file is None or settings.metrics_tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.metrics_tls_cert_file, settings.metrics_tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TokenFileError(
            f"metrics_tls_cert_file {settings.metrics_tls_cert_file} / metrics_tls_key_file "
            f"{settings.metrics_tls_key_file}: not a PEM certificate chain and its key: {exc}"
        ) from None
    return context


def server_tls(settings: Settings) -> ServerTls | None:
    """TLS from the settings, or None for a plaintext server."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return ServerTls(settings)


def token_table(settings: Settings) -> TokenTable | None:
    return None if settings.auth_token_file is None else TokenTable.load(settings.auth_token_file)


def reload_token_table(settings: Settings) -> TokenTable | None:
    """SIGHUP: the token file as it is now, or None (logged, line named) to keep the old table.

    Unlike at start-up, a file that does not parse does not stop the server:
    it goes on serving with the tokens it had, and says why in the log.
    """
    if settings.auth_token_file is None:
        return None
    try:
        table = TokenTable.load(settings.auth_token_file)
    except TokenFileError as exc:
        log.error("token file reload refused, still using the previous tokens: %s", exc)
        return None
    log.info(
        "token file reload: %d tokens of %d tenants from %s",
        len(table),
        len(table.tenants),
        settings.auth_token_file,
    )
    return table
