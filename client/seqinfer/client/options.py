"""Channel construction and per-call metadata.

Everything a connection needs beyond the address lives here, so that later
transport features (TLS, auth tokens) plug into one place:
``channel_credentials`` selects a secure channel, and ``metadata`` is sent
with every call.

A list of addresses (``serve --frontends K`` prints each front end's own
port) becomes one channel over gRPC's static address list, ``ipv4:a,b`` or
``ipv6:[a]:p,[b]:q``, with the ``round_robin`` policy: the kernel balances
the shared port by connection, so one ordinary channel would send every
call to one front end, while round_robin keeps a subchannel to each address
and spreads calls over them. Such a target has no host name of its own
(its authority would be the whole list, which no certificate names), so
the channel's authority is set to the first address: TLS checks the server
certificate against that host, as it would for a single address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "SEQINFER_ADDRESS"
ADDRESSES_ENV = "SEQINFER_ADDRESSES"
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Channel arguments a caller may set to name the server for TLS themselves.
_AUTHORITY_ARGS = ("grpc.default_authority", "grpc.ssl_target_name_override")

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


def _split(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"addresses= needs host:port entries, got {address!r}")
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")), int(port)
    except ValueError:
        # gRPC's static lists take IP literals only; a name would need DNS,
        # which resolves one name, not a list.
        raise ValueError(
            f"addresses= takes IP literals (127.0.0.1:50051, [::1]:50051), got {address!r}"
        ) from None


def address_list_target(addresses: Sequence[str]) -> str:
    """gRPC's static address list for ``addresses``: ``ipv4:h:p,h:q`` or ``ipv6:[h]:p,...``."""
    if isinstance(addresses, str):
        raise ValueError("addresses= takes a sequence of host:port strings, not one string")
    parsed = [_split(a) for a in addresses]
    if not parsed:
        raise ValueError("addresses= needs at least one host:port")
    versions = {ip.version for ip, _ in parsed}
    if len(versions) > 1:
        raise ValueError("addresses= must be all IPv4 or all IPv6 (one gRPC address list)")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in parsed)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in parsed)


def balanced_options(options: ChannelOptions, addresses: Sequence[str]) -> ChannelOptions:
    """``options`` plus round_robin, and the first address as authority unless one is set."""
    extra: list[tuple[str, int | str]] = [("grpc.service_config", ROUND_ROBIN)]
    if not any(key in _AUTHORITY_ARGS for key, _ in options.extra):
        ip, port = _split(addresses[0])
        extra.append(
            ("grpc.default_authority", f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
        )
    return dataclasses.replace(options, extra=(*extra, *options.extra))


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
