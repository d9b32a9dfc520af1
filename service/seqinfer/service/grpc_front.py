"""The gRPC server in front of an ``EngineClient``: servicer, guard, health, reflection, ports.

The same front serves the in-process engine (``server.SeqinferServer``) and
a remote one (``frontend``: one of several front-end processes sharing the
public port). It owns only gRPC objects and never looks past the
``EngineClient``, which is what lets a front end run in another process
than the engine.
"""

from __future__ import annotations

import logging
import secrets

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seqinfer.service.config import Settings
from seqinfer.service.engine_client import EngineClient
from seqinfer.service.guard import CallGuard
from seqinfer.service.observer import Observer
from seqinfer.service.reflection import enable_reflection
from seqinfer.service.security import ServerTls, reload_token_table
from seqinfer.service.servicer import SeqinferServicer
from seqinfer.service.tenants import TokenTable
from seqinfer.service.wire import add_servicer
from seqinfer.v1 import seqinfer_pb2 as pb

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Seqinfer"].full_name


# Trailing metadata of every health check: which server process answered (a
# random id, nothing else), so that a client over several front ends' ports
# can tell when its round_robin channel reaches all of them (the client's
# ``spread``). Health is open to all; the id says nothing about sessions.
SERVER_ID = "x-seqinfer-server-id"


class _NamedHealth(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.server_id = secrets.token_hex(8)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        context.set_trailing_metadata(((SERVER_ID, self.server_id),))
        return await super().Check(request, context)


class GrpcFront:
    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        observer: Observer,
        tokens: TokenTable | None,
        tls: ServerTls | None,
        *,
        share_port: bool = False,
    ) -> None:
        """``share_port``: bind the public port with SO_REUSEPORT (several front
        ends on one port; the kernel spreads connections over them) and also
        a port of this front end's own."""
        self.settings = settings
        self.tls = tls
        self._share_port = share_port
        limit = settings.max_message_bytes
        calls = settings.max_concurrent_rpcs
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Set either way: grpc's default (on) would let a second server
                # bind the same port by accident.
                ("grpc.so_reuseport", 1 if share_port else 0),
                # gRPC queues calls that arrived before the servicer picked
                # them up, and past 1000 (randomly; always past 3000) it drops
                # them with CANCELLED: a burst on one channel lost calls before
                # seqinfer saw them. Sized from max_concurrent_rpcs, so the
                # guard's QUEUE_FULL answers overload first. (grpc.aio's
                # maximum_concurrent_rpcs would make that queue wait instead.)
                ("grpc.server.max_pending_requests", calls),
                ("grpc.server.max_pending_requests_hard_limit", 2 * calls),
                # Opt-in shedding below Python: HTTP/2 tells each client how many
                # streams it may open, and the excess waits in the client's transport
                # instead of costing this loop a call it must pick up and refuse.
                *(
                    [("grpc.max_concurrent_streams", settings.max_streams_per_connection)]
                    if settings.max_streams_per_connection
                    else []
                ),
            ]
        )
        self.guard = CallGuard(
            observer,
            settings.max_concurrent_rpcs,
            tokens,
            tenant_label=settings.metrics_tenant_label,
        )
        add_servicer(SeqinferServicer(engine, settings), self.server, self.guard)
        self.health = _NamedHealth()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            enable_reflection((SERVICE_NAME, health.SERVICE_NAME), self.server)
        self.port = 0
        self.own_port = 0

    def _bind(self, address: str) -> int:
        if self.tls is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, self.tls.credentials())
        if port == 0:
            raise OSError(f"could not bind {address}")
        return port

    async def start(self) -> None:
        host = self.settings.host
        self.port = self._bind(f"{host}:{self.settings.port}")
        if self._share_port:
            self.own_port = self._bind(f"{host}:0")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def reload_certificates(self) -> bool:
        """SIGHUP: new connections use the files as they are now (see ``security``)."""
        if self.tls is None:
            log.info("SIGHUP: this server serves no TLS, no certificate to reload")
            return False
        return self.tls.reload()

    def reload_tokens(self) -> TokenTable | None:
        """SIGHUP: the guard checks calls against the token file as it is now.

        Returns the new table (for the engine's quotas), or None when there is
        no token file or the file was refused (the guard keeps the old one).
        A call already past the guard goes on; the next call with a removed
        token is UNAUTHENTICATED.
        """
        table = reload_token_table(self.settings)
        if table is not None:
            self.guard.tokens = table
        return table

    async def not_serving(self) -> None:
        """Health reads NOT_SERVING from now on (the drain's first step)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
