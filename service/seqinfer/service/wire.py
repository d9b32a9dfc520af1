"""Registers the servicer with request deserializers that never raise.

With the generated registration, a message that does not parse (a truncated
varint, a wrong wire type, invalid UTF-8 in a string field) raises inside
grpc's deserializer: the call ends UNKNOWN with the exception's name, grpc
logs a full traceback per request, and on a stream the one bad frame ends the
whole stream. Here each method's deserializer returns an ``Undecodable`` in
place of the message instead; the handlers answer it like any other bad
request (INVALID_ARGUMENT, reason INVALID_INPUT, field "request"), and a bad
frame in a stream gets one error result while the stream goes on. Failures
are logged at most once per ``LOG_INTERVAL_SECONDS`` with a count, never
with a traceback, so a client sending garbage cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory

from seqinfer.service.errors import InvalidInput, clip
from seqinfer.v1 import seqinfer_pb2 as pb

if TYPE_CHECKING:
    from seqinfer.service.guard import CallGuard

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["Seqinfer"]
LOG_INTERVAL_SECONDS = 10.0


class Undecodable:
    """Stands in for a request message that could not be parsed.

    It has the fields the error path reads (``session_id``, ``request_id``:
    empty, because nothing of the message can be trusted).
    """

    __slots__ = ("detail", "size", "type_name")
    session_id = ""
    request_id = ""

    def __init__(self, type_name: str, size: int, detail: str) -> None:
        self.type_name = type_name
        self.size = size
        self.detail = detail

    def ByteSize(self) -> int:  # protobuf's name: the stream's byte bound reads it
        return self.size

    def error(self) -> InvalidInput:
        return InvalidInput(
            "request",
            f"{self.size} bytes could not be decoded as {self.type_name} ({self.detail})",
            size=self.size,
        )


class _RateLimitedLog:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.suppressed = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.warning("%s%s", text, more)
        self.suppressed = 0
        self.next_at = now + self.interval


_decode_log = _RateLimitedLog(LOG_INTERVAL_SECONDS)


def safe_deserializer(message_class: Any, method: str) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    type_name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or anything a broken frame provokes
            # upb's message names the kind of damage ("String field had bad UTF-8").
            detail = clip(str(exc).rpartition(": ")[2] or type(exc).__name__, 120)
            _decode_log.warning(
                f"undecodable {type_name} on {method} ({len(data)} bytes): {detail}"
            )
            return Undecodable(type_name, len(data), detail)

    return deserialize


def add_servicer(servicer: Any, server: grpc.aio.Server, guard: CallGuard) -> None:
    """What the generated ``add_SeqinferServicer_to_server`` does, with safe
    deserializers, and every handler wrapped by ``guard``."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        path = f"/{SERVICE.full_name}/{method.name}"
        behaviour = getattr(servicer, method.name)
        if method.client_streaming or method.server_streaming:
            behaviour = guard.streaming(method.name, behaviour)
        else:
            behaviour = guard.unary(method.name, behaviour)
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behaviour,
            request_deserializer=safe_deserializer(request_class, path),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
