"""A small Eureka server (the REST API clients use), for tests.

    POST   /eureka/apps/{APP}          {"instance": {...}} -> 204 (registers)
    PUT    /eureka/apps/{APP}/{ID}     -> 200 (heartbeat)
    DELETE /eureka/apps/{APP}/{ID}     -> 200 (cancels)
    GET    /eureka/apps                -> every application
    GET    /eureka/apps/delta          -> what changed since the last fetch (all, here)
    GET    /eureka/apps/{APP}          -> one application

Answers are XML (Eureka's default, as XStream writes it) unless the request accepts
application/json, then JSON as Eureka's Jackson codec writes it: `port` as
{"$": 8080, "@enabled": "true"}, an application's `instance` a list.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

import orjson

from tests.support.background import BackgroundLoop
from tests.support.http_server import Answer, HttpServer, Seen


def instance(app: str, ip: str, port: int, **extra: Any) -> dict[str, Any]:
    """An instance as a Spring Cloud Netflix client registers one (prefer-ip-address)."""
    now = int(time.time() * 1000)
    doc: dict[str, Any] = {
        "instanceId": f"{ip}:{app.lower()}:{port}",
        "hostName": ip,
        "app": app.upper(),
        "ipAddr": ip,
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {
            "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            "name": "MyOwn",
        },
        "leaseInfo": {
            "renewalIntervalInSecs": 30,
            "durationInSecs": 90,
            "registrationTimestamp": now,
            "lastRenewalTimestamp": now,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": now,
        },
        "metadata": {"management.port": str(port), "zone": "east & west"},
        "homePageUrl": f"http://{ip}:{port}/",
        "statusPageUrl": f"http://{ip}:{port}/actuator/info",
        "healthCheckUrl": f"http://{ip}:{port}/actuator/health",
        "vipAddress": app.lower(),
        "secureVipAddress": app.lower(),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": str(now),
        "lastDirtyTimestamp": str(now),
        "actionType": "ADDED",
    }
    doc.update(extra)
    return doc


def _xml_value(name: str, value: Any, indent: str) -> str:
    if name == "port" or name == "securePort":
        enabled = quoteattr(value["@enabled"])
        return f"{indent}<{name} enabled={enabled}>{value['$']}</{name}>\n"
    if name == "dataCenterInfo":
        cls = quoteattr(value["@class"])
        inner = f"{indent}  <name>{escape(value['name'])}</name>\n"
        return f"{indent}<{name} class={cls}>\n{inner}{indent}</{name}>\n"
    if isinstance(value, dict):
        inner = "".join(_xml_value(k, v, indent + "  ") for k, v in value.items())
        return f"{indent}<{name}>\n{inner}{indent}</{name}>\n"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{indent}<{name}>{escape(text)}</{name}>\n"


def application_xml(name: str, instances: list[dict[str, Any]], indent: str = "") -> str:
    inner = "".join(_xml_value("instance", i, indent + "  ") for i in instances)
    return f"{indent}<application>\n{indent}  <name>{name}</name>\n{inner}{indent}</application>\n"


def applications_xml(apps: dict[str, list[dict[str, Any]]]) -> bytes:
    count = sum(len(v) for v in apps.values())
    body = "".join(application_xml(name, insts, "  ") for name, insts in apps.items())
    return (
        "<applications>\n  <versions__delta>1</versions__delta>\n"
        f"  <apps__hashcode>UP_{count}_</apps__hashcode>\n{body}</applications>\n"
    ).encode()


def applications_json(apps: dict[str, list[dict[str, Any]]]) -> bytes:
    count = sum(len(v) for v in apps.values())
    return orjson.dumps(
        {
            "applications": {
                "versions__delta": "1",
                "apps__hashcode": f"UP_{count}_",
                "application": [{"name": n, "instance": i} for n, i in apps.items()],
            }
        }
    )


class EurekaServer:
    """An in-memory Eureka registry over HTTP/1.1."""

    def __init__(self) -> None:
        self.apps: dict[str, list[dict[str, Any]]] = {}
        self.http = HttpServer(self.handle)

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def requests(self) -> list[Seen]:
        return self.http.requests

    def register(self, doc: dict[str, Any]) -> None:
        app = doc["app"].upper()
        rest = [i for i in self.apps.get(app, []) if i["instanceId"] != doc["instanceId"]]
        self.apps[app] = [*rest, doc]

    def answer(self, path: str, accept: str) -> Answer:
        rest = path.split("/apps", 1)[1].strip("/")
        apps = self.apps
        if rest and rest != "delta":
            name = unquote(rest).upper()
            if name not in apps:
                return 404, [], b""
            if "json" in accept:
                body = orjson.dumps({"application": {"name": name, "instance": apps[name]}})
            else:
                body = application_xml(name, apps[name]).encode()
        else:
            body = applications_json(apps) if "json" in accept else applications_xml(apps)
        kind = "application/json" if "json" in accept else "application/xml"
        return 200, [("content-type", kind)], body

    async def handle(self, seen: Seen) -> Answer:
        path = urlsplit(seen.target).path
        if not path.startswith("/eureka/apps"):
            return 404, [], b""
        if seen.method == "GET":
            return self.answer(path, seen.headers.get("accept", ""))
        if seen.method == "POST":
            self.register(orjson.loads(seen.body)["instance"])
            return 204, [], b""
        if seen.method == "DELETE":
            app, _, instance_id = path.split("/apps/", 1)[1].partition("/")
            self.apps[app.upper()] = [
                i for i in self.apps.get(app.upper(), []) if i["instanceId"] != unquote(instance_id)
            ]
            return 200, [], b""
        return 200, [], b""  # heartbeats


@contextlib.contextmanager
def running_eureka() -> Iterator[EurekaServer]:
    loop = BackgroundLoop("eureka")
    server = EurekaServer()
    try:
        loop.call(server.http.start())
        yield server
    finally:
        loop.call(server.http.stop())
        loop.close()
