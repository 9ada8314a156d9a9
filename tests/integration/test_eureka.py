"""`eureka` through real Envoy: py-eureka-client registers and fetches the registry (XML,
Eureka's default) from a Eureka server; a Spring-Cloud-like fetch asks for JSON. Every
instance the client sees names the service host."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from py_eureka_client import eureka_basic

from asm_proxy.envoy_bootstrap import Route
from tests.integration.conftest import Stack, StackFactory
from tests.support.eureka import EurekaServer, instance, running_eureka

ANSWERS = "asm_proxy_plugin_discovery_answers_total"

PROVIDER = "provider.shop.svc.cluster.local"
CHANGED = {"hostName", "ipAddr", "port", "homePageUrl", "statusPageUrl", "healthCheckUrl"}
CONFIG = """
plugins:
  - name: eureka
    type: eureka
    failStrategy: FAIL_OPEN
    config:
      defaultNamespace: shop
      ports: {PROVIDER: 80}
"""


@pytest.fixture
def eureka() -> Iterator[EurekaServer]:
    with running_eureka() as server:
        yield server


def eureka_stack(stack: StackFactory, server: EurekaServer) -> Stack:
    return stack(
        CONFIG,
        routes=[Route("eureka")],
        clusters={"eureka": server.port},
        access_log_keys=("eureka",),
    )


def register(url: str, ip: str) -> None:
    inst = eureka_basic.Instance(
        instanceId=f"{ip}:provider:8080",
        app="PROVIDER",
        ipAddr=ip,
        hostName=ip,
        port=eureka_basic.PortWrapper(8080, True),
        homePageUrl=f"http://{ip}:8080/",
        statusPageUrl=f"http://{ip}:8080/actuator/info",
        healthCheckUrl=f"http://{ip}:8080/actuator/health",
        vipAddress="provider",
        secureVipAddress="provider",
        status="UP",
        metadata={"zone": "east & west"},
    )
    asyncio.run(eureka_basic.register(url, inst))


def check(inst: Any) -> None:
    assert (inst.hostName, inst.ipAddr, inst.port.port) == (PROVIDER, PROVIDER, 80)
    assert inst.homePageUrl == f"http://{PROVIDER}:80/"
    assert inst.healthCheckUrl == f"http://{PROVIDER}:80/actuator/health"
    assert inst.metadata["zone"] == "east & west"


def test_py_eureka_client_sees_service_hosts(stack: StackFactory, eureka: EurekaServer) -> None:
    """Registration passes untouched; full fetch, delta and one application (XML) come
    back with the service host and mapped port, every other field as registered."""
    s = eureka_stack(stack, eureka)
    url = f"http://127.0.0.1:{s.envoy.port}/eureka"
    register(url, "10.244.1.7")
    register(url, "10.244.2.9")
    assert [i["ipAddr"] for i in eureka.apps["PROVIDER"]] == ["10.244.1.7", "10.244.2.9"]

    apps = asyncio.run(eureka_basic.get_applications(url))
    instances = apps.get_application("PROVIDER").instances
    assert len(instances) == 2
    for inst in instances:
        check(inst)
    assert {i.instanceId for i in instances} == {
        "10.244.1.7:provider:8080",
        "10.244.2.9:provider:8080",
    }
    for inst in asyncio.run(eureka_basic.get_delta(url)).get_application("PROVIDER").instances:
        check(inst)
    for inst in asyncio.run(eureka_basic.get_application(url, "PROVIDER")).instances:
        check(inst)
    assert s.metric(ANSWERS, outcome="rewritten") == 3
    assert "accept-encoding" not in eureka.requests[-1].headers


@pytest.mark.parametrize("path", ["/eureka/apps/", "/eureka/apps/delta", "/eureka/apps/PROVIDER"])
def test_json_fetch_as_spring_cloud_asks(
    stack: StackFactory, eureka: EurekaServer, path: str
) -> None:
    eureka.register(instance("provider", "10.244.1.7", 8080))
    eureka.register(instance("billing", "10.244.3.3", 9090))
    s = eureka_stack(stack, eureka)
    resp = s.get(path, headers={"accept": "application/json", "accept-encoding": "gzip"})
    assert resp.status_code == 200
    doc = orjson.loads(resp.content)
    apps = doc["applications"]["application"] if "applications" in doc else [doc["application"]]
    got = {i["app"]: i for app in apps for i in app["instance"]}
    provider = got["PROVIDER"]
    assert (provider["hostName"], provider["ipAddr"], provider["port"]) == (
        PROVIDER,
        PROVIDER,
        {"$": 80, "@enabled": "true"},
    )
    assert provider["statusPageUrl"] == f"http://{PROVIDER}:80/actuator/info"
    registered = eureka.apps["PROVIDER"][0]
    assert {k: v for k, v in provider.items() if k not in CHANGED} == {
        k: v for k, v in registered.items() if k not in CHANGED
    }
    if "BILLING" in got:
        assert got["BILLING"]["hostName"] == "billing.shop.svc.cluster.local"
        assert got["BILLING"]["port"]["$"] == 9090


def test_other_answers_pass(stack: StackFactory, eureka: EurekaServer) -> None:
    """An unknown application (404) and non-registry paths reach the client as sent."""
    s = eureka_stack(stack, eureka)
    assert s.get("/eureka/apps/NOPE").status_code == 404
    assert s.metric(ANSWERS, outcome="status") == 1
