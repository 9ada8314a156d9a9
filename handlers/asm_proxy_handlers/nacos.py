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
answer, an error status) passes through unchanged and is counted by outcome
(`asm_proxy_plugin_discovery_answers_total`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from pydantic import Field, field_validator

from asm_proxy.api import Http, Plugin, media_type
from asm_proxy_handlers.discovery.hosts import DiscoveryConfig, HostMap, Target
from asm_proxy_handlers.discovery.outcomes import Outcomes, unusable

DEFAULT_PATHS = ("/nacos/v1/ns/instance/list", "/nacos/v2/ns/instance/list")
DEFAULT_GROUP = "DEFAULT_GROUP"
PUBLIC_NAMESPACE = "public"
TEMPLATE_FIELDS = frozenset({"service", "group", "namespace", "namespaceId"})


class NacosConfig(DiscoveryConfig):
    """The shared discovery config (`hostTemplate`, `services`, `ports`, `namespaces`,
    `defaultNamespace`; keys of `services`/`ports` are "name" or "GROUP@@name", the
    grouped key wins) and where the HTTP queries are."""

    template_fields: ClassVar[frozenset[str]] = TEMPLATE_FIELDS

    #: Request paths (without query) that are Nacos instance-list queries.
    paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PATHS))
    #: Remove Accept-Encoding from matched queries so Nacos answers uncompressed.
    strip_accept_encoding: bool = True

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"path {path!r} must start with '/' and have no query")
        return value


def nacos_hosts(config: DiscoveryConfig) -> HostMap:
    """The HostMap of a Nacos config (the HTTP and the gRPC plugin share it)."""
    return HostMap(config, frozenset({PUBLIC_NAMESPACE}))


def nacos_target(hosts: HostMap, service: str, group: str, namespace_id: str) -> Target | str:
    """Where instances of `group`@@`service` in `namespace_id` go ("" = public)."""
    if "@@" in service:
        group, service = service.split("@@", 1)
    group = group or DEFAULT_GROUP
    if not service:
        return "no_service_name"
    keys = (f"{group}@@{service}", service)
    return hosts.resolve(
        service, keys, namespace_id=namespace_id or PUBLIC_NAMESPACE, fields={"group": group}
    )


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


def set_instances(hosts: list[Any], host: str, port: int | None) -> str:
    """Set every instance's `ip` to `host` (and `port`, if given) in place: "rewritten",
    "unchanged", or "unexpected_shape" (then `hosts` may be half changed: drop it)."""
    changed = False
    for instance in hosts:
        if not isinstance(instance, dict) or not isinstance(instance.get("ip"), str):
            return "unexpected_shape"
        if port is not None:
            old_port = instance.get("port")
            if type(old_port) is not int:
                return "unexpected_shape"
            if old_port != port:
                instance["port"] = port
                changed = True
        if instance["ip"] != host:
            instance["ip"] = host
            changed = True
    return "rewritten" if changed else "unchanged"


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
    outcome = set_instances(hosts, host, port)
    if outcome != "rewritten":
        return Rewrite(outcome, instances=len(hosts) if outcome == "unchanged" else 0)
    try:
        body = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return Rewrite("unexpected_shape")
    return Rewrite("rewritten", body, len(hosts))


# --------------------------------------------------------------------------------------


class NacosPlugin(Plugin):
    """Nacos instance lists: pod IPs become service host names."""

    Config = NacosConfig

    def __init__(self, config: NacosConfig) -> None:
        super().__init__(config)
        self.paths = frozenset(config.paths)
        self.hosts = nacos_hosts(config)
        self.outcomes = Outcomes(self, "nacos")

    # -- request -------------------------------------------------------------------------

    def target(self, query: dict[str, str]) -> Target | str:
        """Where instances of the queried service go, or why there is no answer to that."""
        return nacos_target(
            self.hosts,
            query.get("serviceName", ""),
            query.get("groupName", ""),
            query.get("namespaceId", ""),
        )

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
        why = unusable(http.response)
        if why is not None:
            self._pass(http, *why)
            return
        media = media_type(http.response.headers.get("content-type"))
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
                self.outcomes.count(result.outcome)
                http.set_metadata("nacos", {"service": target.service, "result": result.outcome})
            else:
                self._pass(http, result.outcome, f"{body.size} bytes")
            return
        body.replace(result.body)
        self.outcomes.rewritten(result.instances)
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
        self.outcomes.pass_through(http, self.log, reason, detail)
