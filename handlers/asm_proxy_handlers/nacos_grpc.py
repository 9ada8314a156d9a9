"""nacos_grpc: Nacos 2.x / 3.x gRPC discovery answers with service host names instead of pod IPs.

    - name: nacos-grpc
      type: nacos_grpc
      failStrategy: FAIL_OPEN
      config:
        hostTemplate: "{service}.{namespace}.svc.cluster.local"
        namespaces: {0b9f7e3c-shop: shop}

Nacos 2.x and 3.x clients (the Java client behind Spring Cloud Alibaba, nacos-sdk-python 2+,
the Go SDK) subscribe and query over gRPC on the server's port + 1000: a unary
`/Request/request` and a bidirectional `/BiRequestStream/requestBiStream` on which the
server pushes changes. Each message is a `Payload` whose `metadata.type` names the Java
class of the JSON in `body.value`. Three carry instance lists: `QueryServiceResponse` and
`SubscribeServiceResponse` (unary answers) and `NotifySubscriberRequest` (pushes); their
`serviceInfo.hosts[].ip` (and `port`, if mapped) are rewritten, with the same config
shape as the `nacos` plugin. Every other message passes byte for byte, and as soon as its
first bytes show its type: nothing is held back that is not rewritten.

The namespace of an answer is the one the client's request named (`namespace` of the
unary request). Pushes name none: it is the `tenant` the client set up its connection with,
or else the namespace this worker last saw a request name on the same client connection
(Envoy's `connection.id` attribute); failing both, a push whose host depends on the
namespace passes unchanged (counted `unknown_namespace`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from google.protobuf.message import DecodeError
from pydantic import Field

from asm_proxy.api import Chunk, Http, Plugin, media_type
from asm_proxy_handlers.discovery.grpc_frames import MessageStream
from asm_proxy_handlers.discovery.hosts import DiscoveryConfig, HostMap, Target
from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Metadata, Payload
from asm_proxy_handlers.discovery.outcomes import Outcomes
from asm_proxy_handlers.nacos import TEMPLATE_FIELDS, nacos_hosts, nacos_target, set_instances

UNARY = "/Request/request"
BI_STREAM = "/BiRequestStream/requestBiStream"
#: Messages that carry an instance list in `serviceInfo`.
ANSWERS = frozenset({"QueryServiceResponse", "SubscribeServiceResponse", "NotifySubscriberRequest"})
#: Unary requests whose answer is one of ANSWERS.
QUERIES = frozenset({"ServiceQueryRequest", "SubscribeServiceRequest"})
#: Client messages that name a namespace (`namespace`, or `tenant` for the connection).
NAMESPACED = frozenset(
    {
        "ConnectionSetupRequest",
        "ServiceQueryRequest",
        "SubscribeServiceRequest",
        "InstanceRequest",
        "PersistentInstanceRequest",
        "BatchInstanceRequest",
        "ServiceListRequest",
    }
)
#: Client connections whose namespace a worker remembers (Envoy's connection.id).
CONNECTIONS_REMEMBERED = 4096
#: Tag of Payload.metadata (field 2, length-delimited): the field Nacos writes first.
_METADATA_TAG = 0x12


class NacosGrpcConfig(DiscoveryConfig):
    """The `nacos` plugin's discovery config, for the gRPC protocol."""

    template_fields: ClassVar[frozenset[str]] = TEMPLATE_FIELDS

    #: Largest message rewritten; a larger one passes unchanged (counted `too_large`).
    #: The Nacos Java client accepts up to 10 MiB by default.
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    #: Remove grpc-accept-encoding from the client's calls so Nacos answers uncompressed.
    strip_accept_encoding: bool = True


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """A protobuf varint at `pos`: (value, position after it), None if it is cut off."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return -1, pos
    return None


def peek_type(start: bytes) -> str | None:
    """The `metadata.type` of a Payload from its first bytes: None if more are needed, ""
    if they do not tell (metadata not first, or not a Payload at all)."""
    if not start:
        return None
    if start[0] != _METADATA_TAG:
        return ""
    length = _varint(start, 1)
    if length is None:
        return None
    size, pos = length
    if size < 0:
        return ""
    if len(start) < pos + size:
        return None
    try:
        return Metadata.FromString(start[pos : pos + size]).type
    except DecodeError:
        return ""


def decode(message: bytes) -> tuple[str, Any] | None:
    """(type, body JSON) of a Payload; None if it is not one or its body is not JSON."""
    try:
        payload = Payload.FromString(message)
        return payload.metadata.type, orjson.loads(payload.body.value)
    except (DecodeError, orjson.JSONDecodeError):
        return None


@dataclass
class GrpcExchange:
    """One gRPC call seen by the plugin: what its requests said, its answer stream."""

    bi_stream: bool
    connection: str | None
    request: MessageStream | None = None
    response: MessageStream | None = None
    request_type: str = ""
    #: The first request message has been read (or seen to name no namespace).
    request_read: bool = False
    #: The namespace answers of this call belong to (None: not known yet).
    namespace: str | None = None


class _Requests:
    """Reads the client's messages (never changes them) for the namespace they name."""

    __slots__ = ("plugin", "x")

    def __init__(self, plugin: NacosGrpcPlugin, x: GrpcExchange) -> None:
        self.plugin, self.x = plugin, x

    def wants(self, start: bytes) -> bool | None:
        kind = peek_type(start)
        if kind is None:
            return None
        if kind and kind not in NAMESPACED:
            self.x.request_type, self.x.request_read = kind, True
            return False
        return True

    def rewrite(self, message: bytes) -> bytes | None:
        x = self.x
        x.request_read = True
        decoded = decode(message)
        if decoded is not None:
            kind, doc = decoded
            x.request_type = kind
            if isinstance(doc, dict):
                named = doc.get("tenant" if kind == "ConnectionSetupRequest" else "namespace")
                if isinstance(named, str) and (named or kind != "ConnectionSetupRequest"):
                    x.namespace = named or "public"
                    self.plugin.remember(x.connection, x.namespace)
        return None


class _Answers:
    """Rewrites the instance lists in the server's messages."""

    __slots__ = ("http", "plugin", "x")

    def __init__(self, plugin: NacosGrpcPlugin, x: GrpcExchange, http: Http) -> None:
        self.plugin, self.x, self.http = plugin, x, http

    def wants(self, start: bytes) -> bool | None:
        kind = peek_type(start)
        if kind is None:
            return None
        return kind == "" or kind in ANSWERS

    def rewrite(self, message: bytes) -> bytes | None:
        return self.plugin.rewrite_message(self.http, self.x, message)


class NacosGrpcPlugin(Plugin):
    """Nacos gRPC instance lists (queries, subscriptions, pushes): pod IPs become service
    host names."""

    Config = NacosGrpcConfig

    def __init__(self, config: NacosGrpcConfig) -> None:
        super().__init__(config)
        self.hosts: HostMap = nacos_hosts(config)
        self.limit = config.max_message_bytes
        self.outcomes = Outcomes(self, "nacos_grpc")
        self.grpc_messages = self.counter(
            "discovery_grpc_messages_total", "gRPC messages of registry answers looked at"
        )
        self.connections: OrderedDict[str, str] = OrderedDict()

    def count_frame(self, what: str) -> None:
        """A message of an answer stream: seen, or passed without a look (and why)."""
        if what == "messages":
            self.grpc_messages.inc()
        else:
            self.outcomes.count(what)

    def remember(self, connection: str | None, namespace: str) -> None:
        """The namespace a client connection's requests name, for its pushes."""
        if connection is None:
            return
        known = self.connections
        known[connection] = namespace
        known.move_to_end(connection)
        if len(known) > CONNECTIONS_REMEMBERED:
            known.popitem(last=False)

    # -- request -------------------------------------------------------------------------

    def on_request_headers(self, http: Http) -> None:
        request = http.request
        path = request.path_only
        if (
            request.method != "POST"
            or path not in (UNARY, BI_STREAM)
            or not (media_type(request.headers.get("content-type")) or "").startswith(
                "application/grpc"
            )
        ):
            http.done()  # not a Nacos gRPC call: Envoy need not send anything more
            return
        if self.config.strip_accept_encoding and "grpc-accept-encoding" in request.headers:
            request.headers.remove("grpc-accept-encoding")
        connection = http.attributes.get("connection.id")
        x = GrpcExchange(path == BI_STREAM, None if connection is None else str(connection))
        x.request = MessageStream(_Requests(self, x), self.limit)
        x.response = MessageStream(_Answers(self, x, http), self.limit, self.count_frame)
        http.state = x

    def on_request_body_chunk(self, http: Http, chunk: Chunk) -> None:
        x = http.state
        if not isinstance(x, GrpcExchange) or x.request is None:
            return
        x.request.feed(chunk.data)  # only read: the chunk goes on as it came
        if not x.request_read:
            return
        # The first message is in: a unary call has said all it will; on the stream the
        # client only answers the server from now on.
        x.request = None
        if not x.bi_stream and x.request_type not in QUERIES:
            http.done()  # its answer carries no instances
        else:
            http.done("request")

    # -- response ------------------------------------------------------------------------

    def on_response_headers(self, http: Http) -> None:
        x = http.state
        if not isinstance(x, GrpcExchange):
            return
        media = media_type(http.response.headers.get("content-type")) or ""
        if http.response.status != 200 or not media.startswith("application/grpc"):
            http.done()  # a trailers-only or non-gRPC answer: no messages to look at

    def on_response_body_chunk(self, http: Http, chunk: Chunk) -> None:
        x = http.state
        if not isinstance(x, GrpcExchange) or x.response is None:
            return
        stream = x.response
        out = stream.feed(chunk.data)
        if chunk.end_of_stream and stream.pending:
            self.outcomes.passed(self.log, "truncated", f"{stream.pending} bytes at the end")
            out = (chunk.data if out is None else out) + stream.flush()
        if out is not None:
            chunk.replace(out)

    def on_response_trailers(self, http: Http) -> None:
        x = http.state
        if isinstance(x, GrpcExchange) and x.response is not None and x.response.pending:
            # Envoy takes no body after the trailers: the cut-off message cannot follow.
            self.outcomes.passed(
                self.log, "truncated", f"{x.response.pending} bytes before the trailers"
            )

    # -- the rewrite ---------------------------------------------------------------------

    def namespace_of(self, x: GrpcExchange) -> str | None:
        if x.namespace is not None:
            return x.namespace
        if x.connection is not None:
            return self.connections.get(x.connection)
        return None

    def rewrite_message(self, http: Http, x: GrpcExchange, message: bytes) -> bytes | None:
        """The Payload with its instances rewritten, or None to send it as it came."""
        try:
            payload = Payload.FromString(message)
        except DecodeError:
            self.outcomes.passed(self.log, "malformed", f"not a Payload ({len(message)} bytes)")
            return None
        kind = payload.metadata.type
        if kind not in ANSWERS:
            return None
        try:
            doc = orjson.loads(payload.body.value)
        except orjson.JSONDecodeError:
            self.outcomes.passed(self.log, "malformed", f"{kind} body is not JSON")
            return None
        reason = self._rewrite_doc(x, kind, doc)
        if isinstance(reason, str):
            if reason in ("unchanged", "no_instances"):
                self.outcomes.count(reason)
            else:
                self.outcomes.passed(self.log, reason, kind)
            http.set_metadata("nacos_grpc", {"type": kind, "result": reason})
            return None
        target, instances = reason
        try:
            payload.body.value = orjson.dumps(doc)
        except orjson.JSONEncodeError:
            self.outcomes.passed(self.log, "unexpected_shape", kind)
            return None
        self.outcomes.rewritten(instances)
        http.set_metadata(
            "nacos_grpc",
            {
                "type": kind,
                "service": target.service,
                "group": target.group,
                "host": target.host,
                "instances": instances,
                "result": "rewritten",
            },
        )
        return payload.SerializeToString()

    def _rewrite_doc(self, x: GrpcExchange, kind: str, doc: Any) -> tuple[Target, int] | str:
        if not isinstance(doc, dict):
            return "unexpected_shape"
        info = doc.get("serviceInfo")
        if info is None:
            code = doc.get("resultCode", 200)
            return "error_answer" if code != 200 or doc.get("errorCode") else "no_instances"
        if not isinstance(info, dict):
            return "unexpected_shape"
        hosts = info.get("hosts")
        name, group = info.get("name"), info.get("groupName") or ""
        if not isinstance(hosts, list) or not isinstance(name, str) or not isinstance(group, str):
            return "unexpected_shape"
        if not hosts:
            return "no_instances"
        if "@@" in name:
            group, name = name.split("@@", 1)
        namespace = self.namespace_of(x)
        if namespace is None:
            keys = (f"{group or 'DEFAULT_GROUP'}@@{name}", name)
            if self.hosts.needs_namespace(keys):
                return "unknown_namespace"
            namespace = ""
        target = nacos_target(self.hosts, name, group, namespace)
        if isinstance(target, str):
            return target
        outcome = set_instances(hosts, target.host, target.port)
        if outcome != "rewritten":
            return outcome
        return target, len(hosts)
