"""What both clients share: settings, channel security, metadata and the input-kind cache.

httpx's ``BaseClient`` shape: :class:`ClientCore` holds everything a client
knows without doing I/O, and :class:`~seqinfer.client.Client` and
:class:`~seqinfer.client.AsyncClient` add only their public signatures and
the loop that sends a :class:`~seqinfer.client.calls.Call` (blocking or
awaited). ``__init__`` lives here alone, so the twins cannot drift apart in
what they accept; each names only how it opens its kind of channel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import grpc

from seqinfer.client.options import (
    DEFAULT_ADDRESS,
    ChannelOptions,
    Metadata,
    address_list_target,
    balanced_options,
    call_metadata,
)
from seqinfer.client.retry import RetryPolicy
from seqinfer.client.security import Security
from seqinfer.client.spread import DEFAULT_READY_TIMEOUT
from seqinfer.client.tensors import InputKind
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc

ChannelT = TypeVar("ChannelT")

#: What KindCache.get returns for a model not asked about yet (None is an answer).
UNKNOWN: Any = object()


class KindCache:
    """Each model's input kind, asked once per model and version.

    Locked because a sync client is shared between threads; the async
    client uses it from one loop, where the lock is never contended.
    """

    def __init__(self) -> None:
        self._kinds: dict[tuple[str, str], InputKind | None] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: str) -> InputKind | None:
        """The cached kind; ``UNKNOWN`` (compare with ``is``) when not asked yet."""
        with self._lock:
            return self._kinds.get((model, version), UNKNOWN)

    def put(self, model: str, version: str, input_kind: str) -> InputKind | None:
        """Remembers the server's answer; kinds this client does not know are None."""
        kind: InputKind | None = input_kind if input_kind in ("dense", "tokens") else None  # type: ignore[assignment]
        with self._lock:
            self._kinds[(model, version)] = kind
        return kind


class ClientCore(Generic[ChannelT]):
    """A connection to a seqinfer server (the part shared by the sync and async clients).

    Args:
        address: ``host:port`` of the server (default ``127.0.0.1:50051``).
        timeout: default deadline in seconds of each call, retries included;
            None: no deadline. Each method also takes ``timeout``.
        retry: when and how to retry (``RetryPolicy.disabled()`` for never).
        channel_credentials: ready-made credentials for a TLS channel (an
            alternative to the certificate arguments); None: see ``tls``.
        metadata: ``(key, value)`` pairs sent with every call.
        options: channel settings (message size, keepalive, routing header).
        channel: an existing channel to use instead of making one (it is not
            closed by ``close``); the TLS arguments must then be left out.
        tls: use TLS, checking the server against the system's roots (or
            ``root_certificates``). Any certificate argument implies it.
        root_certificates: PEM CA certificates to check the server against.
        client_certificate: PEM certificate chain this client presents
            (mutual TLS); needs ``client_key``.
        client_key: PEM private key of ``client_certificate``.
        token: bearer token, sent as ``authorization: Bearer <token>`` on
            every call, streams included; never shown in a ``repr``.
        addresses: several ``ip:port`` of one server (e.g. the front ends'
            own ports of ``serve --frontends K``), instead of ``address``:
            one channel over all of them that spreads calls round-robin.
            IP literals only, all IPv4 or all IPv6; not with ``channel``.
            The first call (or stream) waits until every address has
            answered a health check through the channel (``spread``), so
            that calls spread over all of them from the start.
        ready_timeout: with ``addresses``, how long that first call waits
            at most (seconds) before it goes to the addresses ready by then.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: ChannelOptions | None = None,
        channel: ChannelT | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
        addresses: Sequence[str] | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        if addresses is not None and (address is not None or channel is not None):
            raise ValueError("give addresses= or address=/channel=, not both")
        target = address if address is not None else DEFAULT_ADDRESS
        self.addresses: tuple[str, ...] | None = None
        if addresses is not None:
            target = address_list_target(addresses)
            self.addresses = tuple(addresses)
            options = balanced_options(options or ChannelOptions(), addresses)
        self.address = target
        self.timeout = timeout
        self.retry_policy = retry if retry is not None else RetryPolicy()
        self._options = options if options is not None else ChannelOptions()
        self._security = Security(
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            token=token,
            channel_credentials=channel_credentials,
        )
        self._owns_channel = channel is None
        if channel is not None and self._security.secure:
            raise ValueError("channel= is used as given: leave out the TLS arguments")
        own: Metadata = tuple((str(k), str(v)) for k, v in metadata)
        self._metadata: Metadata = own + self._security.call_metadata(self._owns_channel)
        self._channel: ChannelT = (
            channel
            if channel is not None
            else self._open_channel(target, self._options, self._security.credentials())
        )
        self._stub: Any = pb_grpc.SeqinferStub(self._channel)
        # Until the first call: it must first wait for every address (``spread``).
        self.ready_timeout = ready_timeout
        self._spread_pending = self.addresses is not None and len(set(self.addresses)) > 1
        self._spread_lock = threading.Lock()  # the sync client's; the async one awaits a task
        self._kinds = KindCache()

    def _open_channel(
        self, address: str, options: ChannelOptions, credentials: grpc.ChannelCredentials | None
    ) -> ChannelT:
        """A new channel of the twin's kind; secure when credentials are given."""
        raise NotImplementedError

    def _call_metadata(self, session_id: str | None) -> Metadata:
        return call_metadata(self._metadata, self._options, session_id)

    def _deadline(self, timeout: float | None) -> float | None:
        """A call's budget: its own timeout, else the client's default."""
        return timeout if timeout is not None else self.timeout

    def __repr__(self) -> str:
        # No metadata here: it may carry the bearer token.
        token = "<set>" if self._security.token is not None else None
        return (
            f"{type(self).__name__}(address={self.address!r}, tls={self._security.secure}, "
            f"token={token})"
        )
