"""consul: Consul service discovery answers with service host names instead of pod IPs.

    - name: consul
      type: consul
      failStrategy: FAIL_OPEN
      config:
        hostTemplate: "{service}.{namespace}.svc.cluster.local"
        defaultNamespace: shop

Consul clients (Spring Cloud Consul, py-consul, ...) look services up with
`GET /v1/health/service/{name}` or `GET /v1/catalog/service/{name}`, often as blocking
queries (`?index=N&wait=5m`: Consul answers when something changed or the wait ends; the
plugin does not care how long the answer took). The address a client uses is the
service's own (`Service.Address`, `ServiceAddress`) or, when that is empty, the node's
(`Node.Address`, `Address`): that one becomes the service's host, and the service port
(`Service.Port`, `ServicePort`) the mapped port, if any. `{namespace}` is the Consul
namespace (`ns` query, or the service's `Namespace`; `defaultNamespace` for Consul's
`default` or none) mapped through `namespaces`; `{datacenter}` the `dc` asked for or the
node's `Datacenter`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
from pydantic import Field, field_validator

from asm_proxy.api import Http, Plugin
from asm_proxy_handlers.discovery.hosts import DiscoveryConfig, HostMap, Target
from asm_proxy_handlers.discovery.outcomes import Outcomes, unusable

DEFAULT_PATHS = ("/v1/health/service/", "/v1/catalog/service/")
#: The two answer shapes: /v1/health/service (nested Service, Node) and /v1/catalog/service.
_HEALTH, _CATALOG = "health", "catalog"


class ConsulConfig(DiscoveryConfig):
    """The shared discovery config (keys of `services`/`ports`: service names) and which
    queries are discovery."""

    template_fields: ClassVar[frozenset[str]] = frozenset({"service", "namespace", "datacenter"})

    #: Path prefixes of discovery queries; the service name follows.
    paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PATHS))
    #: Remove Accept-Encoding from discovery queries so Consul answers uncompressed.
    strip_accept_encoding: bool = True

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or not path.endswith("/") or "?" in path:
                raise ValueError(f"path {path!r} must start and end with '/', without query")
        return value


@dataclass(frozen=True, slots=True)
class Query:
    shape: str
    service: str
    namespace: str
    datacenter: str


_NAME = re.compile(r"[^/]+")


def _set(entry: dict[str, Any], key: str, fallback: tuple[dict[str, Any], str], host: str) -> bool:
    """Put `host` where the client reads the address: `key`, or the fallback when empty."""
    value = entry.get(key)
    if not isinstance(value, str):
        return False
    target, field = (entry, key) if value else fallback
    if not isinstance(target.get(field), str):
        return False
    target[field] = host
    return True


class ConsulPlugin(Plugin):
    """Consul health and catalog service queries: pod IPs become service host names."""

    Config = ConsulConfig

    def __init__(self, config: ConsulConfig) -> None:
        super().__init__(config)
        self.hosts = HostMap(config, frozenset({"default"}))
        self.paths = tuple(config.paths)
        self.outcomes = Outcomes(self, "consul")

    def on_request_headers(self, http: Http) -> None:
        request = http.request
        path = request.path_only
        prefix = next((p for p in self.paths if path.startswith(p)), None)
        if request.method != "GET" or prefix is None or not _NAME.fullmatch(path, len(prefix)):
            http.done()  # not a discovery query: Envoy need not send the response
            return
        if self.config.strip_accept_encoding and "accept-encoding" in request.headers:
            request.headers.remove("accept-encoding")
        query = request.query
        shape = _HEALTH if "/health/" in prefix else _CATALOG
        service = unquote(path[len(prefix) :])
        http.state = Query(shape, service, query.get("ns", ""), query.get("dc", ""))

    def on_response_headers(self, http: Http) -> None:
        why = unusable(http.response)
        if why is not None:
            self._pass(http, *why)

    def target(self, q: Query, entry: dict[str, Any]) -> Target | str:
        node = entry.get("Node") if q.shape == _HEALTH else entry
        service = entry.get("Service") if q.shape == _HEALTH else entry
        namespace = q.namespace
        if not namespace and isinstance(service, dict):
            namespace = str(service.get("Namespace") or "")
        datacenter = q.datacenter
        if not datacenter and isinstance(node, dict):
            datacenter = str(node.get("Datacenter") or "")
        return self.hosts.resolve(
            q.service, (q.service,), namespace_id=namespace, fields={"datacenter": datacenter}
        )

    def rewrite(self, q: Query, data: bytes) -> tuple[str, bytes | None, int]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "not_json", None, 0
        if not isinstance(doc, list):
            return "unexpected_shape", None, 0
        if not doc:
            return "no_instances", None, 0
        changed = False
        for entry in doc:
            if not isinstance(entry, dict):
                return "unexpected_shape", None, 0
            target = self.target(q, entry)
            if isinstance(target, str):
                return target, None, 0
            if q.shape == _HEALTH:
                node, service = entry.get("Node"), entry.get("Service")
                if not isinstance(node, dict) or not isinstance(service, dict):
                    return "unexpected_shape", None, 0
                holder, key, fallback, port_key = service, "Address", (node, "Address"), "Port"
            else:
                holder, key, fallback, port_key = (
                    entry,
                    "ServiceAddress",
                    (entry, "Address"),
                    "ServicePort",
                )
            before = (holder.get(key), fallback[0].get(fallback[1]), holder.get(port_key))
            if not _set(holder, key, fallback, target.host):
                return "unexpected_shape", None, 0
            if target.port is not None:
                if type(holder.get(port_key)) is not int:
                    return "unexpected_shape", None, 0
                holder[port_key] = target.port
            after = (holder.get(key), fallback[0].get(fallback[1]), holder.get(port_key))
            changed = changed or before != after
        if not changed:
            return "unchanged", None, len(doc)
        return "rewritten", orjson.dumps(doc), len(doc)

    def on_response_body(self, http: Http) -> None:
        q = http.state
        if not isinstance(q, Query):
            return
        body = http.response.body
        if not body.complete:
            self._pass(http, "incomplete", f"only {body.size} bytes of the answer arrived")
            return
        outcome, new, instances = self.rewrite(q, body.data)
        if new is None:
            if outcome in ("unchanged", "no_instances"):
                self.outcomes.count(outcome)
                http.set_metadata("consul", {"service": q.service, "result": outcome})
            else:
                self._pass(http, outcome, f"{q.service}: {body.size} bytes")
            return
        body.replace(new)
        self.outcomes.rewritten(instances)
        http.set_metadata(
            "consul", {"service": q.service, "instances": instances, "result": "rewritten"}
        )

    def _pass(self, http: Http, reason: str, detail: str) -> None:
        self.outcomes.pass_through(http, self.log, reason, detail)
