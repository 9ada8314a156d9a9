"""nacos: rewrite Nacos discovery answers so each instance's address is its service's host name.

    - name: nacos
      type: nacos
      failStrategy: FAIL_OPEN
      config:
        hostTemplate: "{service}.{namespace}.svc.cluster.local"
        services: {legacy-billing: billing.finance.svc.cluster.local}
        ports: {provider: 80}

Spring Cloud (and other Nacos clients) look their peers up with
`GET /nacos/v1/ns/instance/list` or `GET /nacos/v2/ns/instance/list` and then call the pod
IPs they get back, which a mesh cannot route by service. This plugin rewrites every
`hosts[].ip` of those answers (and `hosts[].port` if a port is mapped) to the service's host
name; every other field keeps its value. The plugin recognises the query itself from the
path, so no `match` rule is needed: any other request costs one header hook and makes Envoy
skip the response.

Anything it cannot rewrite safely (a non-JSON, incomplete, compressed or unexpectedly shaped
answer, an error status) passes through unchanged and is counted in `counts`.
"""

from __future__ import annotations

import logging
import string
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field, field_validator

from asm_proxy.api import Http, Plugin, PluginConfig, media_type, normalize_host

DEFAULT_PATHS = ("/nacos/v1/ns/instance/list", "/nacos/v2/ns/instance/list")
DEFAULT_GROUP = "DEFAULT_GROUP"
PUBLIC_NAMESPACE = "public"
TEMPLATE_FIELDS = frozenset({"service", "group", "namespace", "namespaceId"})


def _host_value(value: str) -> str:
    host = normalize_host(value)
    if host is None:
        raise ValueError(f"{value!r} is not a host name")
    return host


class NacosConfig(PluginConfig):
    #: The host an instance of service S in group G and Nacos namespace N becomes.
    host_template: str = "{service}.{namespace}.svc.cluster.local"
    #: Explicit service -> host; keys "name" or "GROUP@@name" (the grouped key wins).
    services: dict[str, str] = Field(default_factory=dict)
    #: Service -> port every instance of it gets; keys as in `services`.
    ports: dict[str, int] = Field(default_factory=dict)
    #: Nacos namespaceId -> the `{namespace}` of the template (a Kubernetes namespace).
    namespaces: dict[str, str] = Field(default_factory=dict)
    #: `{namespace}` for Nacos' public namespace (namespaceId empty or "public").
    default_namespace: str = "default"
    #: Request paths (without query) that are Nacos instance-list queries.
    paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PATHS))
    #: Remove Accept-Encoding from matched queries so Nacos answers uncompressed.
    strip_accept_encoding: bool = True

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"template {value!r}: {exc}") from None
        for name in fields:
            if name not in TEMPLATE_FIELDS:
                allowed = ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
                raise ValueError(f"template field {{{name}}} is unknown; use {allowed}")
        if "service" not in fields:
            raise ValueError("the template must contain {service}")
        return value

    @field_validator("services")
    @classmethod
    def _services(cls, value: dict[str, str]) -> dict[str, str]:
        return {key: _host_value(host) for key, host in value.items()}

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: dict[str, int]) -> dict[str, int]:
        for key, port in value.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} of {key!r} is not in 1-65535")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"path {path!r} must start with '/' and have no query")
        return value


# --------------------------------------------------------------------------------------
# The rewrite itself: pure, so it can be tested on its own.


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What became of one answer: `body` is the new body, or None to leave it unchanged."""

    outcome: str  # rewritten, unchanged, no_instances, not_json, unexpected_shape, error_answer
    body: bytes | None = None
    instances: int = 0


def _hosts_of(doc: Any) -> list[Any] | str:
    """The instance list of a v1 answer or a v2 (`{code, message, data}`) answer, or the
    outcome that says why there is none."""
    if not isinstance(doc, dict):
        return "unexpected_shape"
    if "hosts" in doc:
        hosts = doc["hosts"]
    elif "code" in doc and "data" in doc:
        if doc["code"] != 0:
            return "error_answer"
        data = doc["data"]
        if not isinstance(data, dict) or "hosts" not in data:
            return "unexpected_shape"
        hosts = data["hosts"]
    else:
        return "unexpected_shape"
    if not isinstance(hosts, list):
        return "unexpected_shape"
    return hosts


def rewrite_instances(data: bytes, host: str, port: int | None = None) -> Rewrite:
    """Set every instance's `ip` to `host` (and `port`, if given) in a Nacos instance-list
    answer. Never raises: anything it cannot rewrite whole is reported and left alone."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Rewrite("not_json")
    hosts = _hosts_of(doc)
    if isinstance(hosts, str):
        return Rewrite(hosts)
    if not hosts:
        return Rewrite("no_instances")
    changed = False
    for instance in hosts:
        if not isinstance(instance, dict) or not isinstance(instance.get("ip"), str):
            return Rewrite("unexpected_shape")
        if port is not None:
            old_port = instance.get("port")
            if type(old_port) is not int:
                return Rewrite("unexpected_shape")
            if old_port != port:
                instance["port"] = port
                changed = True
        if instance["ip"] != host:
            instance["ip"] = host
            changed = True
    if not changed:
        return Rewrite("unchanged", instances=len(hosts))
    try:
        body = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return Rewrite("unexpected_shape")
    return Rewrite("rewritten", body, len(hosts))


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    group: str
    namespace_id: str
    host: str
    port: int | None


class NacosPlugin(Plugin):
    """Nacos instance lists: pod IPs become service host names."""

    Config = NacosConfig

    def __init__(self, config: NacosConfig) -> None:
        super().__init__(config)
        self.paths = frozenset(config.paths)
        self.template = config.host_template
        self.services = dict(config.services)
        self.ports = dict(config.ports)
        self.namespaces = dict(config.namespaces)
        #: What happened to the exchanges seen, by outcome (rewritten, not_json, ...).
        self.counts: Counter[str] = Counter()
        self._last_warning: dict[str, float] = {}

    # -- request -------------------------------------------------------------------------

    def target(self, query: dict[str, str]) -> Target | str:
        """Where instances of the queried service go, or why there is no answer to that."""
        service = query.get("serviceName", "")
        group = query.get("groupName") or DEFAULT_GROUP
        if "@@" in service:
            group, service = service.split("@@", 1)
        if not service:
            return "no_service_name"
        namespace_id = query.get("namespaceId") or PUBLIC_NAMESPACE
        grouped = f"{group}@@{service}"
        host = self.services.get(grouped) or self.services.get(service)
        if host is None:
            namespace = self.namespaces.get(namespace_id)
            if namespace is None:
                namespace = (
                    self.config.default_namespace
                    if namespace_id == PUBLIC_NAMESPACE
                    else namespace_id
                )
            host = self.template.format(
                service=service, group=group, namespace=namespace, namespaceId=namespace_id
            ).lower()
            if normalize_host(host) != host:  # not a host name as it stands
                return "unmappable"
        port = self.ports.get(grouped) or self.ports.get(service)
        return Target(service, group, namespace_id, host, port)

    def on_request_headers(self, http: Http) -> None:
        request = http.request
        if request.method != "GET" or request.path_only not in self.paths:
            http.done()  # not a Nacos query: Envoy need not send the response at all
            return
        target = self.target(request.query)
        if isinstance(target, str):
            self._pass(http, target, f"query {request.path!r}")
            return
        if self.config.strip_accept_encoding and "accept-encoding" in request.headers:
            request.headers.remove("accept-encoding")
        http.state = target

    # -- response ------------------------------------------------------------------------

    def on_response_headers(self, http: Http) -> None:
        headers = http.response.headers
        status = http.response.status
        if status != 200:
            self._pass(http, "status", f"status {status}")
            return
        encoding = (headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            self._pass(http, "encoded", f"content-encoding {encoding}")
            return
        media = media_type(headers.get("content-type"))
        if media and "json" not in media and media != "text/plain":
            self._pass(http, "not_json", f"content-type {media}")
            return

    def on_response_body(self, http: Http) -> None:
        target = http.state
        if not isinstance(target, Target):  # the exchange began without request headers
            return
        body = http.response.body
        if not body.complete:
            self._pass(http, "incomplete", f"only {body.size} bytes of the answer arrived")
            return
        result = rewrite_instances(body.data, target.host, target.port)
        if result.body is None:
            if result.outcome in ("unchanged", "no_instances"):
                self.counts[result.outcome] += 1
                http.set_metadata("nacos", {"service": target.service, "result": result.outcome})
            else:
                self._pass(http, result.outcome, f"{body.size} bytes")
            return
        body.replace(result.body)
        self.counts["rewritten"] += 1
        self.counts["instances_rewritten"] += result.instances
        http.set_metadata(
            "nacos",
            {
                "service": target.service,
                "group": target.group,
                "host": target.host,
                "instances": result.instances,
                "result": "rewritten",
            },
        )

    # -- pass-through --------------------------------------------------------------------

    def _pass(self, http: Http, reason: str, detail: str) -> None:
        """Leave this answer alone: count it, log it (at most every 10s per reason)."""
        self.counts[reason] += 1
        http.set_metadata("nacos", {"result": reason})
        http.done()
        now = time.monotonic()
        if now - self._last_warning.get(reason, -1e9) >= 10.0:
            self._last_warning[reason] = now
            level = logging.INFO if reason == "status" else logging.WARNING
            self.log.log(
                level,
                "nacos %s: answer passed through unchanged (%s; %d so far)",
                reason,
                detail,
                self.counts[reason],
            )
