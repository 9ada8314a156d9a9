"""A small Nacos naming server: the HTTP discovery API Spring Cloud clients use, for tests.

It answers what Nacos 2.x answers, in the documented formats:

    GET  /nacos/v1/ns/instance/list?serviceName=GROUP@@name&namespaceId=&clusters=&healthyOnly=
         -> {"name": "GROUP@@name", "groupName": ..., "hosts": [...], "checksum": ...}
    GET  /nacos/v2/ns/instance/list?serviceName=name&groupName=&namespaceId=&clusterName=
         -> {"code": 0, "message": "success", "data": {...the same...}}
    POST /nacos/v1/ns/instance?serviceName=&ip=&port=&groupName=&namespaceId=&metadata={json}
         -> "ok" (registers an instance)

Answers are compact UTF-8 JSON (unicode unescaped, as Jackson writes it), sent with a
content-length, or chunked (as Tomcat sends them) when `chunked` is set, and gzip-compressed
when `gzip` is set and the request accepts it. Every request is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import orjson

from tests.support.background import BackgroundLoop

DEFAULT_GROUP = "DEFAULT_GROUP"


@dataclass
class Instance:
    ip: str
    port: int
    weight: float = 1.0
    healthy: bool = True
    enabled: bool = True
    ephemeral: bool = True
    cluster: str = "DEFAULT"
    metadata: dict[str, str] = field(default_factory=dict)

    def as_json(self, grouped: str) -> dict[str, Any]:
        return {
            "instanceId": f"{self.ip}#{self.port}#{self.cluster}#{grouped}",
            "ip": self.ip,
            "port": self.port,
            "weight": self.weight,
            "healthy": self.healthy,
            "enabled": self.enabled,
            "ephemeral": self.ephemeral,
            "clusterName": self.cluster,
            "serviceName": grouped,
            "metadata": dict(self.metadata),
            "instanceHeartBeatInterval": 5000,
            "instanceIdGenerator": "simple",
            "instanceHeartBeatTimeOut": 15000,
            "ipDeleteTimeout": 30000,
        }


def service_info(
    group: str, service: str, instances: list[Instance], clusters: str = ""
) -> dict[str, Any]:
    grouped = f"{group}@@{service}"
    return {
        "name": grouped,
        "groupName": group,
        "clusters": clusters,
        "cacheMillis": 10000,
        "hosts": [i.as_json(grouped) for i in instances],
        "lastRefTime": 1718000000123,
        "checksum": "3bbcf6dd1175203a8afdade0e77a27cd",
        "allIPs": False,
        "reachProtectionThreshold": False,
        "valid": True,
    }


def v1_answer(group: str, service: str, instances: list[Instance]) -> bytes:
    return orjson.dumps(service_info(group, service, instances))


def v2_answer(group: str, service: str, instances: list[Instance]) -> bytes:
    wrapped = {"code": 0, "message": "success", "data": service_info(group, service, instances)}
    return orjson.dumps(wrapped)


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


class NacosServer:
    """The naming half of a Nacos server, in memory."""

    def __init__(self) -> None:
        # (namespaceId, group, service) -> instances
        self.services: dict[tuple[str, str, str], list[Instance]] = {}
        self.requests: list[Seen] = []
        self.chunked = False
        self.gzip = False
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def register(
        self,
        service: str,
        instance: Instance,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "public",
    ) -> None:
        self.services.setdefault((namespace, group, service), []).append(instance)

    # -- the API ---------------------------------------------------------------------------

    def handle(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        namespace = query.get("namespaceId") or "public"
        service = query.get("serviceName", "")
        group = query.get("groupName") or DEFAULT_GROUP
        if "@@" in service:
            group, service = service.split("@@", 1)
        json_type = "application/json;charset=UTF-8"
        if url.path == "/nacos/v1/ns/instance" and method == "POST":
            metadata = orjson.loads(query["metadata"]) if query.get("metadata") else {}
            self.register(
                service,
                Instance(
                    query["ip"],
                    int(query["port"]),
                    weight=float(query.get("weight", "1.0")),
                    cluster=query.get("clusterName") or "DEFAULT",
                    metadata=metadata,
                ),
                group=group,
                namespace=namespace,
            )
            return 200, "text/plain;charset=UTF-8", b"ok"
        if method != "GET" or url.path not in (
            "/nacos/v1/ns/instance/list",
            "/nacos/v2/ns/instance/list",
        ):
            return 404, "text/html;charset=UTF-8", b"<html><body>Not Found</body></html>"
        if not service:
            return 400, "text/plain;charset=UTF-8", b"caused: Param 'serviceName' is required."
        instances = list(self.services.get((namespace, group, service), []))
        clusters = query.get("clusters") or query.get("clusterName") or ""
        if clusters:
            wanted = set(clusters.split(","))
            instances = [i for i in instances if i.cluster in wanted]
        if query.get("healthyOnly") == "true":
            instances = [i for i in instances if i.healthy]
        if url.path.startswith("/nacos/v1/"):
            return 200, json_type, v1_answer(group, service, instances)
        return 200, json_type, v2_answer(group, service, instances)

    # -- HTTP/1.1 --------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end the connections still open (Envoy keeps some pooled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data and request is None:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                headers = {k.decode(): v.decode("latin-1") for k, v in request.headers}
                method, target = request.method.decode(), request.target.decode("latin-1")
                self.requests.append(Seen(method, target, headers))
                status, content_type, body = self.handle(method, target)
                out_headers = [("content-type", content_type)]
                if self.gzip and "gzip" in headers.get("accept-encoding", ""):
                    body = gzip.compress(body)
                    out_headers.append(("content-encoding", "gzip"))
                if self.chunked:
                    out_headers.append(("transfer-encoding", "chunked"))
                else:
                    out_headers.append(("content-length", str(len(body))))
                writer.write(conn.send(h11.Response(status_code=status, headers=out_headers)))
                if self.chunked:
                    for i in range(0, len(body), 100):  # several chunks, as a servlet flushes
                        writer.write(conn.send(h11.Data(data=body[i : i + 100])))
                elif body:
                    writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def running_nacos() -> Iterator[NacosServer]:
    """A NacosServer on a background loop, for sync tests."""
    loop = BackgroundLoop("nacos")
    server = NacosServer()
    try:
        loop.call(server.start())
        yield server
    finally:
        loop.call(server.stop())
        loop.close()
