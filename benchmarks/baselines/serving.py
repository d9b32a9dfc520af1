"""Shared start-up for the baseline servers: listen, report the port, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


async def serve(register: Callable[[grpc.aio.Server], None], host: str, port: int) -> None:
    """Run a grpc.aio server until SIGTERM/SIGINT; print "LISTENING <port>" once bound."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    # The harness reads this line to learn the port (port 0 picks a free one).
    print(f"LISTENING {bound}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(grace=1.0)
