"""TLS, mutual TLS and a bearer token: how the client proves who it talks to, and who it is.

Both twins build their channel from these settings, so the rules live once:

* any certificate implies TLS (asking for a CA over plaintext would
  silently check nothing);
* a client certificate needs its key and the reverse, or the handshake
  would fail later with a less clear error;
* the token is sent as ``authorization: Bearer <token>`` on every call.
  On a TLS channel it rides on gRPC call credentials, composed into the
  channel credentials, which covers unary calls and streams alike. gRPC
  refuses call credentials on an insecure channel (they would put a secret
  on the wire in clear), so on a plaintext channel, and on a channel the
  caller built (whose kind we cannot see), the same header is plain call
  metadata instead: the server sees the same thing either way.

The token is kept out of every ``repr`` so that it does not end up in logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from seqinfer.client.options import Metadata

TOKEN_ENV = "SEQINFER_TOKEN"


@dataclass(frozen=True)
class Security:
    """How to secure the channel; every field optional (default: plaintext, no token)."""

    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    token: str | None = None
    channel_credentials: grpc.ChannelCredentials | None = None

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together (mutual TLS)")
        if self.channel_credentials is not None and self._pem_given:
            raise ValueError(
                "give either channel_credentials or root_certificates/client_certificate, not both"
            )
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (None: no token)")

    @property
    def _pem_given(self) -> bool:
        return any(
            x is not None
            for x in (self.root_certificates, self.client_certificate, self.client_key)
        )

    @property
    def secure(self) -> bool:
        """Whether the channel this client makes uses TLS."""
        return self.tls or self._pem_given or self.channel_credentials is not None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for the channel this client makes; None: plaintext."""
        if not self.secure:
            return None
        base = self.channel_credentials or grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )
        if self.token is None:
            return base
        return grpc.composite_channel_credentials(
            base, grpc.access_token_call_credentials(self.token)
        )

    def call_metadata(self, owns_channel: bool) -> Metadata:
        """The token as call metadata where call credentials cannot carry it."""
        if self.token is None or (owns_channel and self.secure):
            return ()
        # Plaintext, or a caller-made channel: grpc would refuse (or could not
        # be given) call credentials, so the header goes as metadata.
        return (("authorization", f"Bearer {self.token}"),)

    def __repr__(self) -> str:
        token = "<set>" if self.token is not None else None
        return (
            f"Security(tls={self.secure}, root_certificates={self.root_certificates is not None}, "
            f"client_certificate={self.client_certificate is not None}, token={token})"
        )
