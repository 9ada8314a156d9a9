"""A small Consul server (the catalog and health HTTP API clients use), for tests.

    GET /v1/health/service/{name}[?passing=1&index=N&wait=2s&dc=&ns=]
        -> [{"Node": {...}, "Service": {...}, "Checks": [...]}, ...]
    GET /v1/catalog/service/{name}[?index=N&wait=2s]
        -> [{"Node", "Address", "Datacenter", "ServiceAddress", "ServicePort", ...}, ...]

Every answer carries `X-Consul-Index`. A blocking query (`index` equal to the current one)
is answered when the service changes or `wait` (default 5m, as Consul) runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from tests.support.background import BackgroundLoop
from tests.support.http_server import Answer, HttpServer, Seen


@dataclass
class Registration:
    node: str
    node_address: str
    service_address: str  # "" = the node's address
    port: int
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def health(self, name: str, dc: str) -> dict[str, Any]:
        sid = f"{name}-{self.node}"
        return {
            "Node": {
                "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
                "Node": self.node,
                "Address": self.node_address,
                "Datacenter": dc,
                "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": 5,
                "ModifyIndex": 5,
            },
            "Service": {
                "ID": sid,
                "Service": name,
                "Tags": list(self.tags),
                "Address": self.service_address,
                "Meta": dict(self.meta),
                "Port": self.port,
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False,
                "CreateIndex": 7,
                "ModifyIndex": 7,
            },
            "Checks": [
                {
                    "Node": self.node,
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "Output": "Agent alive and reachable",
                    "ServiceID": "",
                    "ServiceName": "",
                }
            ],
        }

    def catalog(self, name: str, dc: str) -> dict[str, Any]:
        return {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": self.node,
            "Address": self.node_address,
            "Datacenter": dc,
            "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
            "NodeMeta": {"consul-network-segment": ""},
            "ServiceID": f"{name}-{self.node}",
            "ServiceName": name,
            "ServiceTags": list(self.tags),
            "ServiceAddress": self.service_address,
            "ServiceMeta": dict(self.meta),
            "ServicePort": self.port,
            "ServiceEnableTagOverride": False,
            "CreateIndex": 7,
            "ModifyIndex": 7,
        }


def _seconds(wait: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if wait.endswith(unit):
            return float(wait[: -len(unit)]) * units[unit]
    return float(wait)


class ConsulServer:
    """In-memory services, one index for all, blocking queries on it."""

    def __init__(self, datacenter: str = "dc1") -> None:
        self.datacenter = datacenter
        self.services: dict[str, list[Registration]] = {}
        self.index = 10
        self.http = HttpServer(self.handle)
        self._changed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def requests(self) -> list[Seen]:
        return self.http.requests

    def set(self, name: str, registrations: list[Registration]) -> None:
        """Replace a service's instances (call on the server's loop: it wakes waiters)."""
        self.services[name] = list(registrations)
        self.index += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def handle(self, seen: Seen) -> Answer:
        url = urlsplit(seen.target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        head, _, name = url.path.rpartition("/")
        shape = {"/v1/health/service": "health", "/v1/catalog/service": "catalog"}.get(head)
        if shape is None or seen.method != "GET" or not name:
            return 404, [], b"Not Found"
        if "index" in query and int(query["index"]) >= self.index:
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _seconds(query.get("wait", "5m")))
        dc = query.get("dc") or self.datacenter
        regs = self.services.get(name, [])
        entries = [getattr(r, shape)(name, dc) for r in regs]
        headers = [
            ("content-type", "application/json"),
            ("x-consul-index", str(self.index)),
            ("x-consul-knownleader", "true"),
            ("x-consul-lastcontact", "0"),
        ]
        return 200, headers, orjson.dumps(entries)


@contextlib.contextmanager
def running_consul() -> Iterator[tuple[ConsulServer, BackgroundLoop]]:
    loop = BackgroundLoop("consul")
    server = ConsulServer()
    try:
        loop.call(server.http.start())
        yield server, loop
    finally:
        loop.call(server.http.stop())
        loop.close()
