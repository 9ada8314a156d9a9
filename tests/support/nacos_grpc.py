"""A small Nacos 2.x / 3.x naming server speaking the gRPC protocol, for tests.

What it implements is what a Nacos client needs of a server to register, subscribe, query
and be pushed to, as Nacos documents and answers it:

    POST /Request/request (unary Payload -> Payload)
        ServerCheckRequest      -> ServerCheckResponse {connectionId, supportAbilityNegotiation}
        HealthCheckRequest      -> HealthCheckResponse
        InstanceRequest         -> InstanceResponse (registerInstance / deregisterInstance)
        SubscribeServiceRequest -> SubscribeServiceResponse {serviceInfo} (and subscribes)
        ServiceQueryRequest     -> QueryServiceResponse {serviceInfo}
        anything else           -> ErrorResponse
    POST /BiRequestStream/requestBiStream (Payload <-> Payload)
        client: ConnectionSetupRequest {tenant, labels, abilityTable}, then acks
        server: SetupAckRequest {abilityTable}, NotifySubscriberRequest {serviceInfo} when
                the instances of a subscribed service change

Each Payload's body is the JSON of the Java object (Jackson, nulls left out) and its
metadata.type the class name. A connection is the client's HTTP/2 connection (gRPC's peer
address), as Nacos ties requests and pushes to one. `push_raw` sends any bytes as a
message on a connection's stream (malformed payloads); `requests` keeps every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf.any_pb2 import Any as AnyMessage

from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Metadata, Payload
from tests.support.background import BackgroundLoop
from tests.support.nacos import DEFAULT_GROUP, Instance, service_info

UNARY = "/Request/request"
BI_STREAM = "/BiRequestStream/requestBiStream"


def payload(kind: str, body: dict[str, Any], client_ip: str = "") -> Payload:
    """A Payload as Nacos builds one: type in the metadata, the object's JSON in the body."""
    return Payload(
        metadata=Metadata(type=kind, clientIp=client_ip),
        body=AnyMessage(value=orjson.dumps({k: v for k, v in body.items() if v is not None})),
    )


def decode(message: Payload) -> tuple[str, dict[str, Any]]:
    return message.metadata.type, orjson.loads(message.body.value)


def grpc_service_info(
    group: str, service: str, instances: list[Instance], clusters: str = ""
) -> dict[str, Any]:
    """ServiceInfo as Nacos 2 returns it over gRPC: the HTTP API's, with `name` without the
    group and a current `lastRefTime` (the client drops answers older than what it has)."""
    return {
        **service_info(group, service, instances, clusters),
        "name": service,
        "lastRefTime": int(time.time() * 1000),
        "checksum": "",
    }


def _ok(request_id: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "resultCode": 200, "errorCode": 0, "requestId": request_id, "success": True}


def _serialize(message: Payload | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


@dataclass
class Connection:
    id: str
    peer: str
    tenant: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    outbox: asyncio.Queue[Payload | bytes] = field(default_factory=asyncio.Queue)
    #: (namespace, group, service) this connection subscribed to.
    subscriptions: set[tuple[str, str, str]] = field(default_factory=set)
    acks: list[str] = field(default_factory=list)
    streams: int = 0


class NacosGrpcServer:
    """The naming half of a Nacos 2.x server over gRPC, in memory."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, str, str], list[Instance]] = {}
        self.connections: dict[str, Connection] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (connection, type, body)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._ids = itertools.count(1)

    # -- state -------------------------------------------------------------------------

    def register(
        self,
        service: str,
        instance: Instance,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "public",
    ) -> None:
        self.services.setdefault((namespace, group, service), []).append(instance)

    def set_instances(
        self,
        service: str,
        instances: list[Instance],
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "public",
    ) -> int:
        """Replace a service's instances and push them to its subscribers; how many."""
        key = (namespace, group, service)
        self.services[key] = list(instances)
        pushed = 0
        for conn in self.connections.values():
            if key in conn.subscriptions and conn.streams:
                conn.outbox.put_nowait(self._notify(key))
                pushed += 1
        return pushed

    def push_raw(self, connection: str, data: bytes) -> None:
        """Send `data` as one message on the connection's stream, whatever it is."""
        self.connections[connection].outbox.put_nowait(data)

    def streaming(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.streams]

    def _info(self, key: tuple[str, str, str], clusters: str = "") -> dict[str, Any]:
        _, group, service = key
        instances = list(self.services.get(key, []))
        if clusters:
            wanted = set(clusters.split(","))
            instances = [i for i in instances if i.cluster in wanted]
        return grpc_service_info(group, service, instances, clusters)

    def _notify(self, key: tuple[str, str, str]) -> Payload:
        body = {
            "serviceInfo": self._info(key),
            "headers": {},
            "requestId": str(next(self._ids)),
            "module": "naming",
        }
        return payload("NotifySubscriberRequest", body)

    def _connection(self, context: grpc.aio.ServicerContext) -> Connection:
        peer = context.peer()
        conn = self.connections.get(peer)
        if conn is None:
            host_port = peer.split(":", 1)[-1]
            ip, _, port = host_port.rpartition(":")
            conn = Connection(f"{int(time.time() * 1000)}_{ip}_{port}", peer)
            self.connections[peer] = conn
        return conn

    # -- unary -------------------------------------------------------------------------

    async def _request(self, message: Payload, context: grpc.aio.ServicerContext) -> Payload:
        conn = self._connection(context)
        kind, body = decode(message)
        self.requests.append((conn.id, kind, body))
        rid = body.get("requestId", "")
        if kind == "ServerCheckRequest":
            return payload(
                "ServerCheckResponse",
                _ok(rid, connectionId=conn.id, supportAbilityNegotiation=True),
            )
        if kind == "HealthCheckRequest":
            return payload("HealthCheckResponse", _ok(rid))
        namespace = body.get("namespace") or "public"
        group = body.get("groupName") or DEFAULT_GROUP
        key = (namespace, group, body.get("serviceName", ""))
        if kind == "InstanceRequest":
            i = body["instance"]
            instance = Instance(
                i["ip"],
                i["port"],
                weight=i.get("weight", 1.0),
                cluster=i.get("clusterName") or "DEFAULT",
                metadata=i.get("metadata") or {},
            )
            if body.get("type") == "deRegisterInstance":
                rest = [
                    x for x in self.services.get(key, []) if (x.ip, x.port) != (i["ip"], i["port"])
                ]
            else:
                rest = [*self.services.get(key, []), instance]
            self.set_instances(key[2], rest, group=group, namespace=namespace)
            return payload("InstanceResponse", _ok(rid, type=body.get("type")))
        if kind == "SubscribeServiceRequest":
            if body.get("subscribe", True):
                conn.subscriptions.add(key)
            else:
                conn.subscriptions.discard(key)
            info = self._info(key, body.get("clusters") or "")
            return payload("SubscribeServiceResponse", _ok(rid, serviceInfo=info))
        if kind == "ServiceQueryRequest":
            info = self._info(key, body.get("cluster") or "")
            return payload("QueryServiceResponse", _ok(rid, serviceInfo=info))
        return payload(
            "ErrorResponse",
            {"resultCode": 500, "errorCode": 501, "message": f"unknown {kind}", "success": False},
        )

    # -- bidirectional -----------------------------------------------------------------

    async def _bi_stream(
        self, requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload | bytes]:
        conn = self._connection(context)
        conn.streams += 1

        async def read() -> None:
            async for message in requests:
                kind, body = decode(message)
                self.requests.append((conn.id, kind, body))
                if kind == "ConnectionSetupRequest":
                    conn.tenant = body.get("tenant")
                    conn.labels = body.get("labels") or {}
                    ack = {
                        "abilityTable": {},
                        "headers": {},
                        "requestId": "0",
                        "module": "internal",
                    }
                    conn.outbox.put_nowait(payload("SetupAckRequest", ack))
                else:
                    conn.acks.append(kind)

        reader = asyncio.ensure_future(read())
        getter: asyncio.Future[Payload | bytes] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(conn.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    return
                yield getter.result()
        finally:
            conn.streams -= 1
            for task in (reader, getter):
                if task is not None:
                    task.cancel()

    # -- serving -----------------------------------------------------------------------

    async def start(self) -> None:
        handlers = {
            "request": grpc.unary_unary_rpc_method_handler(
                self._request,
                request_deserializer=Payload.FromString,
                response_serializer=_serialize,
            )
        }
        bi = {
            "requestBiStream": grpc.stream_stream_rpc_method_handler(
                self._bi_stream,
                request_deserializer=Payload.FromString,
                response_serializer=_serialize,
            )
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler("Request", handlers),
                grpc.method_handlers_generic_handler("BiRequestStream", bi),
            ]
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        await cancel_tasks()


async def cancel_tasks() -> None:
    """End every task left on the running loop (but the caller's), before it closes."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def running_nacos_grpc() -> Iterator[tuple[NacosGrpcServer, BackgroundLoop]]:
    """A NacosGrpcServer on a background loop (call its methods there: `loop.call`)."""
    loop = BackgroundLoop("nacos-grpc")
    server = NacosGrpcServer()
    try:
        loop.call(server.start())
        yield server, loop
    finally:
        loop.call(server.stop())
        loop.close()
