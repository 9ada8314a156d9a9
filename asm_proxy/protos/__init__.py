"""The one place that imports the generated Envoy API (xds-protos, protobuf's upb backend).

Everything else imports the message modules from here, so a change of generator or of
API version touches one file, and tests can assert that the per-request path never loads
envoy-data-plane (betterproto2 parses about 60x slower).
"""

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as processing_mode
from envoy.service.auth.v3 import attribute_context_pb2 as attribute_context
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2 as http_status
from google.protobuf import struct_pb2 as struct
from google.rpc import status_pb2 as rpc_status

ProcessingMode = processing_mode.ProcessingMode
BodySendMode = ProcessingMode.BodySendMode
HeaderSendMode = ProcessingMode.HeaderSendMode

__all__ = [
    "BodySendMode",
    "HeaderSendMode",
    "ProcessingMode",
    "attribute_context",
    "auth",
    "auth_grpc",
    "core",
    "ext_proc",
    "ext_proc_grpc",
    "http_status",
    "processing_mode",
    "rpc_status",
    "struct",
]
