"""The error reasons exist in five places; they must name the same set, with one code each.

The places: the proto's ``ErrorReason`` enum (and the code its comments give
each value), the server's domain exceptions, the server's reason → code
table (status.py), the client's exception classes, and the README's error
table. A reason added to one and forgotten in another fails here, not in a
caller's ``except`` clause.

Also: the server's domain modules import no grpc, so the engine side can be
carried to another process without the transport.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from seqinfer.client import errors as client_errors
from seqinfer.service import errors as server_errors
from seqinfer.service import status
from seqinfer.v1 import seqinfer_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
UNSPECIFIED = "ERROR_REASON_UNSPECIFIED"
PROTO_REASONS = frozenset(pb.ErrorReason.keys()) - {UNSPECIFIED}


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _server_classes() -> list[type[server_errors.SeqinferError]]:
    return [server_errors.SeqinferError, *_subclasses(server_errors.SeqinferError)]


def _table_codes() -> dict[str, str]:
    return {pb.ErrorReason.Name(value): code.name for value, code in status.CODES.items()}


def _client_codes() -> dict[str, str]:
    return {reason: cls.default_code.name for reason, cls in client_errors.BY_REASON.items()}


def _proto_comment_codes() -> dict[str, str]:
    """Each ErrorReason value's code, as the comment above it in the .proto says."""
    text = (ROOT / "proto/seqinfer/v1/seqinfer.proto").read_text()
    body = re.search(r"enum ErrorReason \{(.*?)\n\}", text, flags=re.S)
    assert body, "no ErrorReason enum in seqinfer.proto"
    codes: dict[str, str] = {}
    comment: list[str] = []
    for line in body.group(1).splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
        elif value := re.match(r"([A-Z_]+)\s*=\s*\d+;", line):
            if value.group(1) != UNSPECIFIED:
                first = comment[0] if comment else ""
                codes[value.group(1)] = first.split(":", 1)[0]
            comment = []
    return codes


def _readme_codes() -> dict[str, str]:
    """The README's error table, reason → gRPC code."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| reason | gRPC code | when |")
    codes: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = re.match(r"\| `([A-Z_]+)` \| ([A-Z_]+) \|", line)
        assert row, f"README error table row not understood: {line!r}"
        assert row.group(1) not in codes, f"{row.group(1)} twice in the README's error table"
        codes[row.group(1)] = row.group(2)
    return codes


def test_the_server_exceptions_carry_exactly_the_proto_reasons():
    assert {cls.reason for cls in _server_classes()} == PROTO_REASONS


def test_the_status_table_covers_exactly_the_proto_reasons():
    assert set(_table_codes()) == PROTO_REASONS
    assert all(isinstance(code, grpc.StatusCode) for code in status.CODES.values())
    assert grpc.StatusCode.OK not in status.CODES.values()


def test_the_client_decodes_exactly_the_proto_reasons():
    assert set(client_errors.BY_REASON) == PROTO_REASONS
    for reason, cls in client_errors.BY_REASON.items():
        assert cls.default_reason == reason


@pytest.mark.parametrize(
    ("where", "codes"),
    [
        ("the client", _client_codes),
        ("the README", _readme_codes),
        ("the proto's comments", _proto_comment_codes),
    ],
)
def test_every_reason_has_the_servers_code_everywhere(where, codes):
    assert codes() == _table_codes(), f"{where} disagrees with status.CODES"


@pytest.mark.parametrize("cls", _server_classes(), ids=lambda c: c.__name__)
def test_a_server_error_reaches_the_client_as_its_own_class(cls):
    """Through the one converter and the client's decoder, reason and code survive."""
    if issubclass(cls, server_errors.InvalidInput):
        error = cls("x", "boom")
    else:
        error = cls("boom", field="x")
    decoded = client_errors.from_status(status.to_status_proto(error))
    assert type(decoded) is client_errors.BY_REASON[cls.reason]
    assert decoded.reason == cls.reason
    assert decoded.code is status.status_code(error)
    assert decoded.metadata == {"field": "x"}


def test_a_domain_error_with_a_reason_the_proto_lacks_is_refused_when_defined():
    with pytest.raises(TypeError, match="NOT_A_REASON"):

        class _Typo(server_errors.SeqinferError):
            reason = "NOT_A_REASON"


# Modules of the gRPC side (servicer, converter, stream, call guard, status, server,
# codec, reply encoding, reflection, the health probe). Every other module is the engine side
# or shared domain code and must not import grpc.
GRPC_SIDE = {
    "servicer",
    "convert",
    "stream",
    "guard",
    "grpc_front",
    "frontend",
    # Wiring of the engine process: it reuses SeqinferServer.start_engine, so
    # it loads the server module (and grpc) though it serves no gRPC itself.
    "engine_process",
    "security",
    "status",
    "server",
    "wire",
    "results",
    "reflection",
    "healthcheck",
}

_PROBE = """
import importlib, sys

class NoGrpc:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" or name.startswith(("grpc.", "grpc_")):
            raise ImportError(f"a domain module imports {name}")
        return None

sys.meta_path.insert(0, NoGrpc())
for module in sys.argv[1:]:
    importlib.import_module(module)
"""


def test_domain_modules_import_no_grpc():
    package = ROOT / "service/seqinfer/service"
    modules = sorted(
        f"seqinfer.service.{p.stem}"
        for p in package.glob("*.py")
        if p.stem not in GRPC_SIDE and p.stem != "__init__"
    )
    modules += sorted(
        f"seqinfer.service.models.{p.stem}"
        for p in package.glob("models/*.py")
        if p.stem != "__init__"
    )
    assert "seqinfer.service.errors" in modules and "seqinfer.service.scheduler" in modules
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
