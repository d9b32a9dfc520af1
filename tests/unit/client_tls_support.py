"""Certificates (``tests.certs``) and a tiny TLS gRPC server, for the client's TLS and token tests.

The client side is tested against a stand-in, so that what it sends can be
seen exactly (the seqinfer server's own TLS and tokens are tested in
tests/integration/test_security.py): a real grpc server on loopback with
``grpc.ssl_server_credentials``, answering ListModels (unary) and
StreamSteps (streaming), behind an interceptor that records the
``authorization`` metadata of every call and the client certificate's
common name, if one was presented.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.certs import Authority, Pem

CLIENT_CN = "seqinfer-test-client"


@dataclass(frozen=True)
class Pki:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""

    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem

    @classmethod
    def make(cls) -> Pki:
        ca, other = Authority("seqinfer test CA"), Authority("some other CA")
        return cls(
            Pem(ca.pem, b""),
            ca.issue("localhost", server=True),
            ca.issue(CLIENT_CN, server=False),
            Pem(other.pem, b""),
        )


@dataclass
class Seen:
    """What the stand-in server saw: (method, authorization or None, client CN or None)."""

    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authorizations(self, method: str) -> list[str | None]:
        with self.lock:
            return [auth for m, auth, _ in self.calls if m.endswith("/" + method)]


class _Recorder(grpc.ServerInterceptor):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        auth = dict(details.invocation_metadata or ()).get("authorization")
        with self.seen.lock:
            self.seen.calls.append((details.method, auth, None))
        return continuation(details)


class _Standin(pb_grpc.SeqinferServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def _peer(self, context: grpc.ServicerContext) -> None:
        names = context.auth_context().get("x509_common_name")
        cn = names[0].decode() if names else None
        with self.seen.lock:
            method, auth, _ = self.seen.calls[-1]
            self.seen.calls[-1] = (method, auth, cn)

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._peer(context)
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="tls-model", version="1")])

    def GetModel(self, request: Any, context: grpc.ServicerContext) -> pb.ModelInfo:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        raise AssertionError("abort returns only by raising")

    def StreamSteps(self, requests: Any, context: grpc.ServicerContext) -> Iterator[pb.StepResult]:
        self._peer(context)
        for req in requests:
            reply = pb.StepResponse(session_id=req.session_id, step=req.expected_step + 1)
            yield pb.StepResult(request_id=req.request_id, response=reply)


@contextmanager
def standin_server(
    pki: Pki | None, *, require_client_cert: bool = False
) -> Iterator[tuple[str, Seen]]:
    """A loopback server (TLS unless ``pki`` is None); yields its address and what it saw."""
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[_Recorder(seen)])
    pb_grpc.add_SeqinferServicer_to_server(_Standin(seen), server)
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials(
            [(pki.server.key, pki.server.cert)],
            root_certificates=pki.ca.cert if require_client_cert else None,
            require_client_auth=require_client_cert,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(grace=None).wait()
