"""The demo's service registries: a Nacos 1.x HTTP naming API and a Nacos 2.x gRPC one,
each answering one service (`provider` in namespace `0b9f7e3c-shop`) whose instances are
registered by pod IP, as a Nacos behind a Kubernetes cluster answers.

They answer only what the demo asks (the instance list over HTTP; ServerCheckRequest and
ServiceQueryRequest over gRPC): enough to show the `nacos` and `nacos_grpc` plugins turn
the pod IPs into service names, not a Nacos. The tests use fuller ones (tests/support/).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc
import h11
import orjson

NAMESPACE = "0b9f7e3c-shop"
GROUP = "DEFAULT_GROUP"
SERVICE = "provider"
#: The instances, by pod IP (a pod network asm-proxy's plugins are told about).
POD_IPS = ("10.244.3.7", "10.244.5.12")
PORT = 8080


def service_info(name: str) -> dict[str, Any]:
    """The JSON Nacos answers for the service (`name`: grouped over HTTP, plain over gRPC)."""
    grouped = f"{GROUP}@@{SERVICE}"
    return {
        "name": name,
        "groupName": GROUP,
        "clusters": "",
        "cacheMillis": 10000,
        "hosts": [
            {
                "instanceId": f"{ip}#{PORT}#DEFAULT#{grouped}",
                "ip": ip,
                "port": PORT,
                "weight": 1.0,
                "healthy": True,
                "enabled": True,
                "ephemeral": True,
                "clusterName": "DEFAULT",
                "serviceName": grouped,
                "metadata": {},
            }
            for ip in POD_IPS
        ],
        "lastRefTime": int(time.time() * 1000),
        "checksum": "",
        "allIPs": False,
        "reachProtectionThreshold": False,
        "valid": True,
    }


class NacosHttp:
    """GET /nacos/v1/ns/instance/list?serviceName=DEFAULT_GROUP@@provider&namespaceId=..."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _answer(self, target: str) -> tuple[int, bytes]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query))
        wanted = query.get("serviceName") in (SERVICE, f"{GROUP}@@{SERVICE}")
        if url.path != "/nacos/v1/ns/instance/list" or not wanted:
            return 404, b'{"message": "not found"}'
        if query.get("namespaceId") != NAMESPACE:
            return 200, orjson.dumps({**service_info(f"{GROUP}@@{SERVICE}"), "hosts": []})
        return 200, orjson.dumps(service_info(f"{GROUP}@@{SERVICE}"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    status, body = self._answer(event.target.decode())
                    headers = [("content-type", "application/json")]
                    headers += [("content-length", str(len(body)))]
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()


def _payload(kind: str, body: dict[str, Any]) -> Any:
    from google.protobuf.any_pb2 import Any as AnyMessage

    from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Metadata, Payload

    return Payload(metadata=Metadata(type=kind), body=AnyMessage(value=orjson.dumps(body)))


def query_request() -> Any:
    """The ServiceQueryRequest a Nacos 2 client sends for the service's instances."""
    body = {"namespace": NAMESPACE, "groupName": GROUP, "serviceName": SERVICE}
    return _payload("ServiceQueryRequest", {**body, "cluster": "", "requestId": "1"})


class NacosGrpc:
    """The unary call of Nacos 2's gRPC API (/Request/request)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def _request(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        kind = message.metadata.type
        body = orjson.loads(message.body.value or b"{}")
        ok = {"resultCode": 200, "errorCode": 0, "requestId": body.get("requestId", "")}
        ok["success"] = True
        if kind == "ServerCheckRequest":
            return _payload("ServerCheckResponse", {**ok, "connectionId": "demo"})
        if kind == "ServiceQueryRequest" and body.get("serviceName") == SERVICE:
            return _payload("QueryServiceResponse", {**ok, "serviceInfo": service_info(SERVICE)})
        error = {"resultCode": 500, "errorCode": 501, "message": f"not in the demo: {kind}"}
        return _payload("ErrorResponse", {**error, "success": False})

    async def start(self) -> None:
        from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Payload

        handler = grpc.unary_unary_rpc_method_handler(
            self._request,
            request_deserializer=Payload.FromString,
            response_serializer=Payload.SerializeToString,
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("Request", {"request": handler})]
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
