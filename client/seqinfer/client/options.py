"""Channel construction and per-call metadata.

Everything a connection needs beyond the address lives here, so that later
transport features (TLS, auth tokens) plug into one place:
``channel_credentials`` selects a secure channel, and ``metadata`` is sent
with every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "SEQINFER_ADDRESS"

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ChannelOptions:
    """gRPC channel settings.

    Attributes:
        max_message_bytes: send and receive limit; large T or big StepMany
            messages need more than gRPC's 4 MiB default.
        keepalive_seconds: HTTP/2 keepalive ping interval while calls are
            open, so that a dead connection under a long stream is noticed
            (and retried) instead of hanging. None (the default): off, because
            a gRPC server answers pings more frequent than it permits (5 min
            by default) with GOAWAY "too_many_pings"; enable it only together
            with the server's ``grpc.http2.min_ping_interval_without_data_ms``.
        session_id_header: metadata key that carries the session id on
            session-scoped unary calls, so a load balancer can route every
            call of a session to the replica holding its state; None: off.
        extra: further raw ``grpc.*`` channel arguments.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_seconds: float | None = None
    session_id_header: str | None = "x-session-id"
    extra: Sequence[tuple[str, int | str]] = field(default_factory=tuple)

    def channel_args(self) -> list[tuple[str, int | str]]:
        """The options list for ``grpc.insecure_channel`` and friends."""
        args: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        if self.keepalive_seconds is not None:
            args += [
                ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),
            ]
        args += list(self.extra)
        return args


def make_channel(
    address: str,
    options: ChannelOptions,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.Channel:
    """A sync channel: secure when credentials are given, else plaintext."""
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options.channel_args())
    return grpc.insecure_channel(address, options=options.channel_args())


def make_aio_channel(
    address: str,
    options: ChannelOptions,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.aio.Channel:
    """An asyncio channel: secure when credentials are given, else plaintext."""
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options.channel_args())
    return grpc.aio.insecure_channel(address, options=options.channel_args())


def call_metadata(
    base: Metadata, options: ChannelOptions, session_id: str | None = None
) -> Metadata:
    """Metadata for one call: the client's own plus the routing header, if any."""
    if session_id and options.session_id_header:
        return (*base, (options.session_id_header, session_id))
    return base
