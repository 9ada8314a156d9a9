"""eureka: Eureka registry answers with service host names instead of pod IPs.

    - name: eureka
      type: eureka
      failStrategy: FAIL_OPEN
      config:
        hostTemplate: "{service}.{namespace}.svc.cluster.local"
        defaultNamespace: shop
        ports: {provider: 80}

Eureka clients (Spring Cloud Netflix, py-eureka-client, ...) fetch the registry with
`GET /eureka/apps`, `/eureka/apps/delta` or `/eureka/apps/{APP}`, as JSON (what Spring Cloud
asks for) or XML (Eureka's default), and call an instance at its `hostName` (or `ipAddr`)
and `port`. Each instance's `ipAddr` and `hostName`, and the host of its `homePageUrl`,
`statusPageUrl`, `healthCheckUrl` and `secureHealthCheckUrl`, become the service's host
(`{service}` is the application name, lower-cased); its `port` (and the port of URLs that
used it) becomes the mapped port, if any. Everything else keeps its bytes: XML is edited in
place, JSON re-serialised with its keys in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import escape

import orjson
from pydantic import Field, field_validator

from asm_proxy.api import Http, Plugin, media_type
from asm_proxy_handlers.discovery.hosts import DiscoveryConfig, HostMap, Target
from asm_proxy_handlers.discovery.outcomes import Outcomes, unusable

HOST_FIELDS = ("ipAddr", "hostName")
URL_FIELDS = ("homePageUrl", "statusPageUrl", "healthCheckUrl", "secureHealthCheckUrl")
#: Elements of an <instance> the XML rewrite reads or edits.
XML_FIELDS = frozenset({"app", "port", *HOST_FIELDS, *URL_FIELDS})


class EurekaConfig(DiscoveryConfig):
    """The shared discovery config (keys of `services`/`ports`: application names, any
    case; `{namespace}` is `defaultNamespace`: Eureka has no namespaces) and where the
    registry's REST API is."""

    #: Path prefixes of the Eureka REST API (`{prefix}/apps...`).
    base_paths: list[str] = Field(default_factory=lambda: ["/eureka", "/eureka/v2"])
    #: Remove Accept-Encoding from registry fetches so Eureka answers uncompressed.
    strip_accept_encoding: bool = True

    @field_validator("base_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"path {path!r} must start with '/' and have no query")
        return [p.rstrip("/") for p in value]


Resolve = Callable[[str], Target | str]


@dataclass
class Result:
    outcome: str
    body: bytes | None = None
    instances: int = 0


#: scheme://[userinfo@]host[:port]rest — what an instance URL is made of.
_URL = re.compile(
    r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@]*@)?(\[[^\]/]*\]|[^:/?#\[\]]+)(?::(\d+))?(.*)", re.S
)


def _new_url(url: str, host: str, old_port: int | None, port: int | None) -> str:
    """`url` with `host` in place of its host (and `port` for `old_port`, if mapped)."""
    m = _URL.fullmatch(url)
    if m is None:
        return url
    scheme, userinfo, _, url_port, rest = m.groups()
    if port is not None and url_port is not None and int(url_port) == old_port:
        url_port = str(port)
    netloc = host if url_port is None else f"{host}:{url_port}"
    return f"{scheme}{userinfo or ''}{netloc}{rest}"


# -- JSON --------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    return None


def _json_instance(instance: Any, app: str, resolve: Resolve, seen: set[str]) -> str:
    if not isinstance(instance, dict):
        return "unexpected_shape"
    target = resolve(str(instance.get("app") or app))
    if isinstance(target, str):
        seen.add(target)
        return target
    old_port: int | None = None
    port_field = instance.get("port")
    if isinstance(port_field, dict) and isinstance(port_field.get("$"), int):
        old_port = port_field["$"]
    changed = False
    for key in HOST_FIELDS:
        if isinstance(instance.get(key), str) and instance[key] != target.host:
            instance[key] = target.host
            changed = True
    if target.port is not None:
        if old_port is None or not isinstance(port_field, dict):
            return "unexpected_shape"
        if old_port != target.port:
            port_field["$"] = target.port
            changed = True
    for key in URL_FIELDS:
        url = instance.get(key)
        if isinstance(url, str) and url:
            new = _new_url(url, target.host, old_port, target.port)
            changed = changed or new != url
            instance[key] = new
    return "rewritten" if changed else "unchanged"


def rewrite_json(data: bytes, resolve: Resolve) -> Result:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Result("not_json")
    if not isinstance(doc, dict):
        return Result("unexpected_shape")
    if "applications" in doc:
        holder = doc["applications"]
        apps = _as_list(holder.get("application", [])) if isinstance(holder, dict) else None
    else:
        apps = _as_list(doc.get("application"))
    if apps is None:
        return Result("unexpected_shape")
    count, changed, seen = 0, False, set[str]()
    for app in apps:
        instances = _as_list(app.get("instance", [])) if isinstance(app, dict) else None
        if instances is None:
            return Result("unexpected_shape")
        for instance in instances:
            outcome = _json_instance(instance, str(app.get("name", "")), resolve, seen)
            if outcome == "unexpected_shape":
                return Result(outcome)
            count += 1
            changed = changed or outcome == "rewritten"
    if not count:
        return Result("no_instances")
    if not changed:
        return Result(min(seen) if seen else "unchanged", instances=count)
    return Result("rewritten", orjson.dumps(doc), count)


# -- XML ---------------------------------------------------------------------------------


class _XmlInstances:
    """Finds each <instance>'s fields (text and byte span) with expat; edits are spliced
    into the original bytes, so everything else stays as it was."""

    def __init__(self, resolve: Resolve) -> None:
        self.resolve = resolve
        self.depth = 0
        self.instance_depth = -1
        self.fields: dict[str, tuple[int, int, str]] = {}
        self.open: str | None = None
        self.open_start = -1
        self.text: list[str] = []
        self.edits: list[tuple[int, int, bytes]] = []
        self.count = 0
        self.changed = False
        self.reasons: set[str] = set()
        self.parser = expat.ParserCreate()
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.chars

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if name == "instance" and self.instance_depth < 0:
            self.instance_depth, self.fields = self.depth, {}
        elif self.depth == self.instance_depth + 1 and name in XML_FIELDS:
            self.open, self.open_start, self.text = name, -1, []

    def chars(self, data: str) -> None:
        if self.open is not None:
            if self.open_start < 0:
                self.open_start = self.parser.CurrentByteIndex
            self.text.append(data)

    def end(self, name: str) -> None:
        if self.open is not None and name == self.open and self.depth == self.instance_depth + 1:
            at = self.parser.CurrentByteIndex
            if self.open_start >= 0:
                self.fields[name] = (self.open_start, at, "".join(self.text))
            self.open = None
        elif name == "instance" and self.depth == self.instance_depth:
            self.instance_depth = -1
            self.finish()
        self.depth -= 1

    def finish(self) -> None:
        self.count += 1
        fields = self.fields
        if "app" not in fields:
            self.reasons.add("unexpected_shape")
            return
        target = self.resolve(fields["app"][2].strip())
        if isinstance(target, str):
            self.reasons.add(target)
            return
        old_port: int | None = None
        if "port" in fields:
            try:
                old_port = int(fields["port"][2].strip())
            except ValueError:
                old_port = None
        new: dict[str, str] = {k: target.host for k in HOST_FIELDS if k in fields}
        if target.port is not None:
            if old_port is None:
                self.reasons.add("unexpected_shape")
                return
            new["port"] = str(target.port)
        for key in URL_FIELDS:
            if key in fields and fields[key][2].strip():
                new[key] = _new_url(fields[key][2].strip(), target.host, old_port, target.port)
        for key, value in new.items():
            start, end, old = fields[key]
            if value != old:
                self.edits.append((start, end, escape(value).encode()))
                self.changed = True


def rewrite_xml(data: bytes, resolve: Resolve) -> Result:
    reader = _XmlInstances(resolve)
    try:
        reader.parser.Parse(data, True)
    except expat.ExpatError:
        return Result("not_xml")
    if "unexpected_shape" in reader.reasons:
        return Result("unexpected_shape")
    if not reader.count:
        return Result("no_instances")
    if not reader.changed:
        return Result(
            min(reader.reasons) if reader.reasons else "unchanged", instances=reader.count
        )
    out, last = [], 0
    for start, end, text in sorted(reader.edits):
        out += [data[last:start], text]
        last = end
    out.append(data[last:])
    return Result("rewritten", b"".join(out), reader.count)


# -- the plugin --------------------------------------------------------------------------

_APPS = re.compile(r"/apps(?:/delta|/[^/]+)?/?")


@dataclass(frozen=True, slots=True)
class Query:
    path: str


class EurekaPlugin(Plugin):
    """Eureka registry fetches: pod IPs become service host names."""

    Config = EurekaConfig

    def __init__(self, config: EurekaConfig) -> None:
        super().__init__(config)
        self.hosts = HostMap(
            config.model_copy(
                update={
                    "services": {k.lower(): v for k, v in config.services.items()},
                    "ports": {k.lower(): v for k, v in config.ports.items()},
                }
            ),
            frozenset(),
        )
        self.base_paths = tuple(config.base_paths)
        self.outcomes = Outcomes(self, "eureka")

    def resolve(self, app: str) -> Target | str:
        if not app:
            return "no_service_name"
        name = app.lower()
        return self.hosts.resolve(name, (name,))

    def recognises(self, path: str) -> bool:
        for base in self.base_paths:
            if path.startswith(base) and _APPS.fullmatch(path, len(base)):
                return True
        return False

    def on_request_headers(self, http: Http) -> None:
        request = http.request
        if request.method != "GET" or not self.recognises(request.path_only):
            http.done()  # not a registry fetch: Envoy need not send the response
            return
        if self.config.strip_accept_encoding and "accept-encoding" in request.headers:
            request.headers.remove("accept-encoding")
        http.state = Query(request.path_only)

    def on_response_headers(self, http: Http) -> None:
        why = unusable(http.response)
        if why is not None:
            self._pass(http, *why)

    def on_response_body(self, http: Http) -> None:
        if not isinstance(http.state, Query):
            return
        body = http.response.body
        if not body.complete:
            self._pass(http, "incomplete", f"only {body.size} bytes of the answer arrived")
            return
        data = body.data
        media = media_type(http.response.headers.get("content-type")) or ""
        is_json = "json" in media or (not media and data.lstrip()[:1] == b"{")
        result = (rewrite_json if is_json else rewrite_xml)(data, self.resolve)
        if result.body is None:
            if result.outcome in ("unchanged", "no_instances"):
                self.outcomes.count(result.outcome)
                http.set_metadata("eureka", {"result": result.outcome})
            else:
                self._pass(http, result.outcome, f"{http.state.path}: {body.size} bytes")
            return
        body.replace(result.body)
        self.outcomes.rewritten(result.instances)
        http.set_metadata("eureka", {"instances": result.instances, "result": "rewritten"})

    def _pass(self, http: Http, reason: str, detail: str) -> None:
        self.outcomes.pass_through(http, self.log, reason, detail)
