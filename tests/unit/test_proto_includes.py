"""A non-Python client compiles the contract from the checkout alone.

proto/seqinfer/v1/seqinfer.proto imports google/rpc/status.proto, and every
error carries google.rpc.ErrorInfo from error_details.proto. Both ship in
proto/google/rpc/, so `protoc -I proto` is the whole include path: protoc
itself brings only the well-known google/protobuf/* types (as grpc_tools'
bundled include folder does, which the test checks holds nothing else).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
CONTRACT = "seqinfer/v1/seqinfer.proto"
DETAILS = "google/rpc/error_details.proto"


def _protoc(include: Path, out: Path, *files: str) -> subprocess.CompletedProcess[str]:
    # `python -m grpc_tools.protoc` adds its bundled google/protobuf folder, as protoc would.
    return subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", "--include_imports",
         f"--descriptor_set_out={out}", *files],
        cwd=include, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _files(path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return {f.name: f for f in fds.file}


def _shape(messages: object) -> list[object]:
    """Names, numbers, labels and types of every field (json_name aside: protoc adds it)."""
    return [
        (
            m.name,
            [(f.name, f.number, f.label, f.type, f.type_name) for f in m.field],
            _shape(m.nested_type),
            [(e.name, [(v.name, v.number) for v in e.value]) for e in m.enum_type],
        )
        for m in messages  # type: ignore[attr-defined]
    ]


def test_protoc_builtin_includes_hold_only_the_well_known_types() -> None:
    bundled = Path(str(resources.files("grpc_tools") / "_proto"))
    assert (bundled / "google" / "protobuf" / "timestamp.proto").is_file()
    assert sorted(p.name for p in (bundled / "google").iterdir()) == ["protobuf"]


def test_contract_compiles_with_only_the_checkout_on_the_include_path(tmp_path: Path) -> None:
    # docs/client.md's command.
    out = tmp_path / "seqinfer.pb"
    result = _protoc(PROTO, out, CONTRACT, DETAILS)
    assert result.returncode == 0, result.stderr
    files = _files(out)
    assert {CONTRACT, "google/rpc/status.proto", DETAILS} <= set(files)
    step_result = next(m for m in files[CONTRACT].message_type if m.name == "StepResult")
    error = next(f for f in step_result.field if f.name == "error")
    assert error.type_name == ".google.rpc.Status"


def test_shipped_google_rpc_protos_are_the_ones_the_server_speaks(tmp_path: Path) -> None:
    # Same descriptors as the Python runtime's googleapis-common-protos, field for field.
    out = tmp_path / "rpc.pb"
    assert _protoc(PROTO, out, "google/rpc/status.proto", DETAILS).returncode == 0
    files = _files(out)
    for module in (status_pb2, error_details_pb2):
        runtime = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(runtime)
        shipped = files[module.DESCRIPTOR.name]
        assert _shape(shipped.message_type) == _shape(runtime.message_type), shipped.name
        assert len(shipped.message_type) >= 1
        assert shipped.package == runtime.package == "google.rpc"


def test_without_the_shipped_protos_the_contract_does_not_compile(tmp_path: Path) -> None:
    # What a client met before proto/google/rpc existed: the import is not found.
    bare = tmp_path / "bare"
    shutil.copytree(PROTO / "seqinfer", bare / "seqinfer")
    result = _protoc(bare, tmp_path / "x.pb", CONTRACT)
    assert result.returncode != 0
    assert "google/rpc/status.proto" in result.stderr


def test_packaging_installs_no_google_package() -> None:
    # proto/google is protoc's include folder, not a Python package beside googleapis'.
    import tomllib

    from setuptools import find_namespace_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = [
        pkg
        for where in find["find"]["where"]
        for pkg in find_namespace_packages(str(ROOT / where), include=find["find"]["include"])
    ]
    assert "seqinfer.v1" in found
    assert not [p for p in found if p.startswith("google")]
