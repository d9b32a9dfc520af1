"""The one wrapper around every RPC: call accounting, overload, and errors to statuses.

``wire.add_servicer`` wraps each handler here, unary and streaming alike, so
that the rules below hold for every method without a decorator per handler:

- the call is counted (``Observer.rpc_started``/``rpc_finished`` with the
  status code it ended with; a stream counts once);
- on a server with a token file, the caller's bearer token names its tenant
  (``tenants.TokenTable``), which the handler gets as its third argument;
  no token or an unknown one ends the call UNAUTHENTICATED before anything
  else is looked at (health and reflection are other services, not wrapped);
- past ``max_concurrent_rpcs`` calls in a handler, a call is refused at once
  with a retryable QUEUE_FULL, rather than queued by gRPC until it drops
  calls with CANCELLED;
- a request that could not be decoded (``wire.Undecodable``) is refused like
  any bad request; in a stream that is the stream's own business (one error
  result, the stream goes on);
- a domain error (``SeqinferError``) ends the call with its status and
  ErrorInfo (``status``); anything else is a server fault: logged with its
  traceback, answered INTERNAL without its text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from seqinfer.service.errors import QueueFull, SeqinferError, internal
from seqinfer.service.observer import Observer
from seqinfer.service.status import status_code, to_grpc_status
from seqinfer.service.tenants import TokenTable
from seqinfer.service.wire import Undecodable

log = logging.getLogger(__name__)

Unary = Callable[[Any, grpc.aio.ServicerContext, str], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext, str], AsyncIterator[Any]]
Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


def _bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


class CallGuard:
    def __init__(
        self,
        observer: Observer,
        max_concurrent_rpcs: int,
        tokens: TokenTable | None = None,
        *,
        tenant_label: bool = False,
    ) -> None:
        """``tenant_label``: also count each call by its tenant (metrics_tenant_label)."""
        self.observer = observer
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.tokens = tokens
        self.tenant_label = tenant_label and tokens is not None
        self.active = 0  # calls in a handler now

    def tenant(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant ("" without a token file); raises UNAUTHENTICATED."""
        if self.tokens is None:
            return ""
        return self.tokens.tenant_of(_bearer_token(context)).name

    def overloaded(self) -> QueueFull:
        limit = self.max_concurrent_rpcs
        return QueueFull(
            f"server is busy: {limit} calls in progress (max_concurrent_rpcs); nothing was "
            "applied, retry later",
            bound="max_concurrent_rpcs",
            limit=limit,
        )

    def unary(self, method: str, fn: Unary) -> Handler:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self, method)
            try:
                tenant = call.admit(context)
                if type(request) is Undecodable:
                    raise request.error()
                return await fn(request, context, tenant)
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.end()

        return handler

    def streaming(self, method: str, fn: Streaming) -> Handler:
        async def handler(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(self, method)
            try:
                tenant = call.admit(context)
                async for reply in fn(requests, context, tenant):
                    yield reply
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.end()

        return handler


class _Call:
    """One call's accounting; ``fail`` turns what ended it into its status."""

    __slots__ = ("code", "guard", "method", "started", "tenant")

    def __init__(self, guard: CallGuard, method: str) -> None:
        self.guard = guard
        self.method = method
        self.code = "OK"
        self.tenant: str | None = None  # known once the token is checked
        self.started = time.perf_counter()
        guard.observer.rpc_started(method)
        guard.active += 1

    def admit(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant, once the call may go on (a token, room for one more call)."""
        guard = self.guard
        tenant = self.tenant = guard.tenant(context)
        if guard.active > guard.max_concurrent_rpcs:
            raise guard.overloaded()
        return tenant

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Abort the call with ``exc``'s status (re-raising is the caller's)."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = "CANCELLED"
            return
        if isinstance(exc, grpc.aio.AbortError):
            return  # already aborted, the code was set then
        if isinstance(exc, SeqinferError):
            error = exc
        elif isinstance(exc, Exception):
            log.exception("%s failed", self.method, exc_info=exc)
            error = internal(exc)
        else:
            return
        self.code = status_code(error).name
        await context.abort_with_status(to_grpc_status(error))

    def end(self) -> None:
        guard = self.guard
        guard.active -= 1
        guard.observer.rpc_finished(self.method, self.code, time.perf_counter() - self.started)
        # The tenant's name, never its token: a call refused UNAUTHENTICATED has no tenant.
        if guard.tenant_label and self.tenant is not None:
            guard.observer.tenant_call_finished(self.tenant, self.method, self.code)
