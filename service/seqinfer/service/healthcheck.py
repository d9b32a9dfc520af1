"""Asks a seqinfer server's gRPC health service whether it is serving.

Used as the container healthcheck (``seqinfer health --address ...`` or
``python -m seqinfer.service.healthcheck ADDRESS``), so it needs nothing in the
image beyond the package: no grpc_health_probe binary. It imports grpc and the
health stubs only, never torch, so that it starts in well under a second.

Exit status: 0 SERVING, 1 anything else (NOT_SERVING, unknown service,
unreachable, timeout), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The overall server; the server also reports "seqinfer.v1.Seqinfer".
DEFAULT_SERVICE = ""


def default_address() -> str:
    """Where the server in this container listens: SEQINFER_HEALTH_ADDRESS, else
    127.0.0.1 on SEQINFER_PORT (the server's own env setting), else 127.0.0.1:50051.

    So a healthcheck written without --address follows a port changed through env.
    """
    explicit = os.environ.get("SEQINFER_HEALTH_ADDRESS")
    if explicit:
        return explicit
    return f"127.0.0.1:{os.environ.get('SEQINFER_PORT') or 50051}"


@dataclass(frozen=True)
class HealthResult:
    """The answer of one check: ``ok`` only for SERVING."""

    ok: bool
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, or a grpc.StatusCode name
    detail: str = ""


def check(
    address: str,
    service: str = DEFAULT_SERVICE,
    timeout: float = 3.0,
    *,
    tls: bool = False,
    ca_file: str | None = None,
) -> HealthResult:
    """One ``grpc.health.v1.Health/Check`` call to ``address`` (host:port)."""
    if tls:
        root = None
        if ca_file:
            with open(ca_file, "rb") as f:
                root = f.read()
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root))
    else:
        channel = grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        detail = e.details() if hasattr(e, "details") else str(e)
        # NOT_FOUND is the health service's answer for a service name it does not know.
        status = "SERVICE_UNKNOWN" if code == grpc.StatusCode.NOT_FOUND else name
        return HealthResult(False, status, detail or "")
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthResult(reply.status == health_pb2.HealthCheckResponse.SERVING, status)


def main(argv: list[str] | None = None) -> int:
    """``python -m seqinfer.service.healthcheck [ADDRESS] [--service S] [--timeout T]``."""
    parser = argparse.ArgumentParser(
        prog="python -m seqinfer.service.healthcheck",
        description="Exit 0 if the seqinfer server at ADDRESS reports SERVING.",
    )
    parser.add_argument(
        "address",
        nargs="?",
        default=None,
        help="host:port [default: $SEQINFER_HEALTH_ADDRESS, else 127.0.0.1:$SEQINFER_PORT, "
        "else 127.0.0.1:50051]",
    )
    parser.add_argument("--service", default=DEFAULT_SERVICE, help='"" is the whole server')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-file", default=None, help="PEM roots for --tls")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    args.address = args.address or default_address()
    result = check(args.address, args.service, args.timeout, tls=args.tls, ca_file=args.ca_file)
    if not args.quiet:
        line = f"{args.address} {args.service or '(server)'}: {result.status}"
        print(f"{line} ({result.detail})" if result.detail else line, file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
