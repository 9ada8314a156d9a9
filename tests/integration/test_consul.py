"""`consul` through real Envoy: py-consul looks services up in a Consul server (health and
catalog, plain and as blocking queries); every address it gets is the service host."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from asm_proxy.envoy_bootstrap import Route
from tests.integration.conftest import Stack, StackFactory
from tests.support.background import BackgroundLoop
from tests.support.consul import ConsulServer, Registration, running_consul

ANSWERS = "asm_proxy_plugin_discovery_answers_total"

PROVIDER = "provider.shop.svc.cluster.local"
CONFIG = """
plugins:
  - name: consul
    type: consul
    failStrategy: FAIL_OPEN
    config:
      defaultNamespace: shop
      ports: {provider: 80}
"""
PODS = [
    Registration("node-a", "10.0.0.1", "10.244.1.7", 8080, tags=["v1"], meta={"zone": "east"}),
    Registration("node-b", "10.0.0.2", "", 8080),  # the node's address is the service's
]


@pytest.fixture
def consul_server() -> Iterator[tuple[ConsulServer, BackgroundLoop]]:
    with running_consul() as running:
        yield running


def consul_stack(stack: StackFactory, server: ConsulServer) -> tuple[Stack, consul.Consul]:
    # Blocking queries outlive Envoy's default route timeout: the route has none.
    s = stack(CONFIG, routes=[Route("consul", timeout="0s")], clusters={"consul": server.port})
    return s, consul.Consul(host="127.0.0.1", port=s.envoy.port)


def address(entry: dict[str, Any]) -> tuple[str, int]:
    """What Spring Cloud Consul and py-consul users take: the service's address, else the node's."""
    service = entry["Service"]
    return service["Address"] or entry["Node"]["Address"], service["Port"]


def test_health_and_catalog_queries(
    stack: StackFactory, consul_server: tuple[ConsulServer, BackgroundLoop]
) -> None:
    server, _ = consul_server
    server.services["provider"] = PODS
    s, client = consul_stack(stack, server)
    index, nodes = client.health.service("provider", passing=True)
    assert index == str(server.index)
    assert [address(n) for n in nodes] == [(PROVIDER, 80)] * 2
    assert nodes[0]["Service"]["Tags"] == ["v1"] and nodes[0]["Service"]["Meta"] == {"zone": "east"}
    assert nodes[1]["Node"]["Node"] == "node-b" and nodes[1]["Checks"][0]["Status"] == "passing"

    _, entries = client.catalog.service("provider")
    assert [(e["ServiceAddress"] or e["Address"], e["ServicePort"]) for e in entries] == [
        (PROVIDER, 80)
    ] * 2
    assert entries[0]["Address"] == "10.0.0.1"  # a node address the client does not use stays
    assert s.metric(ANSWERS, outcome="rewritten") == 2

    _, none = client.health.service("unknown")
    assert none == []


def test_blocking_query_returns_the_change_rewritten(
    stack: StackFactory, consul_server: tuple[ConsulServer, BackgroundLoop]
) -> None:
    """A watch (`index`, `wait`) held by Consul until the service changes gets the new
    instances, rewritten, whenever they come."""
    server, loop = consul_server
    server.services["provider"] = PODS[:1]
    s, client = consul_stack(stack, server)
    index, _ = client.health.service("provider")
    got: list[Any] = []
    watcher = threading.Thread(
        target=lambda: got.append(client.health.service("provider", index=index, wait="20s"))
    )
    watcher.start()

    async def change() -> None:
        server.set("provider", [*PODS, Registration("node-c", "10.0.0.3", "10.244.3.3", 8080)])

    while not any("index=" in r.target for r in server.requests):  # the watch is waiting
        watcher.join(0.05)
    loop.call(change())
    watcher.join(20)
    ((new_index, nodes),) = got
    assert int(new_index) > int(index)
    assert [address(n) for n in nodes] == [(PROVIDER, 80)] * 3
    assert s.metric(ANSWERS, outcome="rewritten") == 2
