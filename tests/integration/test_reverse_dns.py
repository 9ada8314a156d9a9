"""`reverse_dns` through real Envoy and a real DNS server (dnsmasq): a request sent to a pod
IP is routed by the service's virtual host, not by the IP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from asm_proxy.envoy_bootstrap import ExtProc, Route
from tests.integration.conftest import Stack, StackFactory
from tests.support.dnsmasq import DnsMasq

PROVIDER = "provider.shop.svc.cluster.local"
PTR = {
    "10.0.0.222": PROVIDER + ".",
    "10.0.0.7": "10-0-0-7.provider.shop.svc.cluster.local.",
    "fd00:10::5": PROVIDER,
}
ROUTES = [Route("b", domains=[PROVIDER, PROVIDER + ":*"]), Route("a", domains=["*"])]
# Generous time limits, so a loaded machine cannot turn a slow lookup into Envoy's 504.
CONFIG = """
deadline: 900ms
plugins:
  - name: reverse-dns
    type: reverse_dns
    failStrategy: FAIL_OPEN
    timeout: 500ms
    config:
      podCIDRs: [10.0.0.0/16, "fd00:10::/64"]
      static: {10.0.0.50: provider.shop.svc.cluster.local}
      dns: {server: 127.0.0.1, port: %d, timeout: 2s}
"""


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[DnsMasq]:
    with DnsMasq(PTR, slow_zones=["1.0.10.in-addr.arpa"]) as server:
        yield server


@pytest.fixture
def s(stack: StackFactory, dnsmasq: DnsMasq) -> Stack:
    return stack(
        CONFIG % dnsmasq.port,
        routes=ROUTES,
        ext_proc=ExtProc(message_timeout="1s"),
        access_log_keys=("reverse_dns_original_authority",),
    )


@pytest.mark.parametrize(
    "authority", ["10.0.0.222:8080", "10.0.0.7:8080", "[fd00:10::5]:8080", "10.0.0.50:8080"]
)
def test_pod_ip_reaches_the_service_cluster(s: Stack, authority: str) -> None:
    """IPv4 and IPv6 pod IPs (service and endpoint PTR records, and the static map): the
    request is routed again after the rewrite and reaches the service's cluster with the
    service host."""
    resp = s.get("/orders", headers={"host": authority})
    assert resp.status_code == 200
    assert resp.headers["x-upstream"] == "b"
    assert s.seen("b").header("host") == f"{PROVIDER}:8080"
    (entry,) = s.log_entries(1)
    assert entry["upstream_cluster"] == "b"
    assert entry["authority"] == f"{PROVIDER}:8080"
    assert entry["md_reverse_dns_original_authority"] == authority


@pytest.mark.parametrize(
    "authority", ["10.0.0.99:8080", "10.9.0.222:8080", "shop.example.com", "[fd00:20::5]:80"]
)
def test_other_hosts_keep_their_route(s: Stack, authority: str) -> None:
    """No PTR name, outside podCIDRs, or not an IP: Host and route unchanged."""
    resp = s.get("/orders", headers={"host": authority})
    assert resp.headers["x-upstream"] == "a"
    assert s.seen("a").header("host") == authority


def test_second_request_is_served_from_the_cache(s: Stack, dnsmasq: DnsMasq) -> None:
    """Repeated requests to one pod IP: one PTR query."""
    dnsmasq.sync()
    before = dnsmasq.queries("10.0.0.222")
    for _ in range(5):
        assert s.get("/", headers={"host": "10.0.0.222:8080"}).headers["x-upstream"] == "b"
    dnsmasq.sync()
    assert dnsmasq.queries("10.0.0.222") - before <= 1


def _get(port: int, authority: str) -> tuple[int, str | None]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        resp = client.get("/", headers={"host": authority})
    return resp.status_code, resp.headers.get("x-upstream")


def test_slow_dns_fails_open_and_blocks_nobody(s: Stack) -> None:
    """A lookup the DNS server never answers: after the plugin's timeout (500ms) the
    request goes on unchanged (FAIL_OPEN); requests for other pods sent while it waits are
    answered before it is."""
    assert s.get("/", headers={"host": "10.0.0.7:8080"}).headers["x-upstream"] == "b"
    plugin = s.plugin("reverse-dns")
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        slow = pool.submit(_get, s.envoy.port, "10.0.1.50:8080")
        give_up = time.monotonic() + 5
        while not plugin.inflight and time.monotonic() < give_up:
            time.sleep(0.005)  # poll: the slow lookup has started
        assert plugin.inflight
        fast = [_get(s.envoy.port, "10.0.0.222:8080") for _ in range(3)]
        assert not slow.done()
        assert slow.result() == (200, "a")
        slow_time = time.monotonic() - started
    assert fast == [(200, "b")] * 3
    assert slow_time >= 0.45
