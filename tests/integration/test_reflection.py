"""Server reflection answers v1 clients (grpcurl's first choice) as well as v1alpha ones.

The v1 client here is built the way a tool in another language would meet
the server: its first request is hand-encoded protobuf on the v1 method
path, and every later message class comes from the v1 descriptor the
server itself returns, in a fresh descriptor pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2

from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import ServerThread, make_model, running_server

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
SERVICES = {
    "seqinfer.v1.Seqinfer",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_server([make_model(name="tiny")]) as server:
        yield server


def _exchange(address: str, method: str, requests: list[bytes]) -> list[bytes]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        return list(call(iter(requests), timeout=30))


def _string_field(number: int, value: str) -> bytes:
    """One protobuf string field, encoded by hand (values under 128 bytes)."""
    data = value.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def test_v1_lists_every_service_from_hand_encoded_bytes(server: ServerThread) -> None:
    (reply,) = _exchange(server.address, V1_METHOD, [_string_field(7, "")])  # list_services
    # The v1 and v1alpha messages have the same fields; v1alpha's class reads v1's bytes.
    listed = reflection_pb2.ServerReflectionResponse.FromString(reply)
    assert {s.name for s in listed.list_services_response.service} == SERVICES


def _v1_classes(server: ServerThread) -> tuple[Any, Any, descriptor_pb2.FileDescriptorProto]:
    symbol = "grpc.reflection.v1.ServerReflection"
    (reply,) = _exchange(server.address, V1_METHOD, [_string_field(4, symbol)])
    described = reflection_pb2.ServerReflectionResponse.FromString(reply)
    (raw,) = described.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    return request, response, file


def test_v1_describes_itself_as_the_v1_protocol(server: ServerThread) -> None:
    _, _, file = _v1_classes(server)
    assert file.name == "grpc/reflection/v1/reflection.proto"
    assert file.package == "grpc.reflection.v1"
    (service,) = file.service
    (method,) = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    fields = {m.name: [(f.name, f.number, f.type) for f in m.field] for m in alpha.message_type}
    assert {m.name: [(f.name, f.number, f.type) for f in m.field] for m in file.message_type} == (
        fields
    )
    assert not file.options.deprecated


def test_v1_client_lists_services_and_describes_seqinfer(server: ServerThread) -> None:
    request, response, _ = _v1_classes(server)
    requests = [
        request(list_services="").SerializeToString(),
        request(file_containing_symbol="seqinfer.v1.Seqinfer").SerializeToString(),
        request(file_containing_symbol="no.such.Symbol").SerializeToString(),
    ]
    listed, described, missing = (
        response.FromString(r) for r in _exchange(server.address, V1_METHOD, requests)
    )
    assert {s.name for s in listed.list_services_response.service} == SERVICES
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    contract = next(f for f in files if f.name == "seqinfer/v1/seqinfer.proto")
    (service,) = contract.service
    assert [m.name for m in service.method] == [
        m.name for m in pb.DESCRIPTOR.services_by_name["Seqinfer"].methods
    ]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1alpha_still_answers(server: ServerThread) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    (reply,) = _exchange(server.address, method, [request])
    listed = reflection_pb2.ServerReflectionResponse.FromString(reply)
    assert {s.name for s in listed.list_services_response.service} == SERVICES


def test_reflection_off_serves_neither() -> None:
    with running_server([make_model(name="tiny")], reflection=False) as server:
        for method in (V1_METHOD, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
            with pytest.raises(grpc.RpcError) as err:
                _exchange(server.address, method, [_string_field(7, "")])
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
