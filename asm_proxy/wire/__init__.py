"""The messages asm-proxy speaks with Envoy, generated from the project's own .proto files.

`protos/asm_proxy/wire/*.proto` declare the parts of Envoy's ext_proc and ext_authz APIs that
asm-proxy uses, with Envoy 1.40's field numbers (tests/unit/test_wire.py holds them to the
descriptors inside the Envoy binary); `python protos/generate.py` makes the modules here and
their typed stubs. The proto package is asm-proxy's own (`asm_proxy.wire`), so these never
clash with another copy of Envoy's API in the same process; only the gRPC method paths below
carry Envoy's service names.
"""

from __future__ import annotations

from typing import Any

from asm_proxy.wire import envoy_core_pb2 as core
from asm_proxy.wire import ext_authz_pb2 as auth
from asm_proxy.wire import ext_proc_pb2 as ext_proc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
PROCESS_METHOD = f"/{EXT_PROC_SERVICE}/Process"
CHECK_METHOD = f"/{AUTHZ_SERVICE}/Check"

ProcessingRequest = ext_proc.ProcessingRequest
ProcessingResponse = ext_proc.ProcessingResponse
ProcessingMode = ext_proc.ProcessingMode
BodySendMode = ProcessingMode.BodySendMode
HeaderSendMode = ProcessingMode.HeaderSendMode
CheckRequest = auth.CheckRequest
CheckResponse = auth.CheckResponse


def process_stub(channel: Any) -> Any:
    """A client's `Process` call on a grpc (or grpc.aio) channel: for tests and tools."""
    return channel.stream_stream(
        PROCESS_METHOD,
        request_serializer=ProcessingRequest.SerializeToString,
        response_deserializer=ProcessingResponse.FromString,
    )


def check_stub(channel: Any) -> Any:
    """A client's `Check` call on a grpc (or grpc.aio) channel: for tests and tools."""
    return channel.unary_unary(
        CHECK_METHOD,
        request_serializer=CheckRequest.SerializeToString,
        response_deserializer=CheckResponse.FromString,
    )


__all__ = [
    "AUTHZ_SERVICE",
    "CHECK_METHOD",
    "EXT_PROC_SERVICE",
    "PROCESS_METHOD",
    "BodySendMode",
    "CheckRequest",
    "CheckResponse",
    "HeaderSendMode",
    "ProcessingMode",
    "ProcessingRequest",
    "ProcessingResponse",
    "auth",
    "check_stub",
    "core",
    "ext_proc",
    "process_stub",
]
