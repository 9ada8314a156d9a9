"""The `reverse_dns` built-in through the shared test host, against a real DNS server
(dnsmasq on 127.0.0.1 with the PTR records below)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from asm_proxy.api import FailStrategy
from asm_proxy.testing import PluginHost
from asm_proxy_handlers.reverse_dns import ReverseDnsPlugin
from tests.support.dnsmasq import DnsMasq

QUERIES = "asm_proxy_plugin_reverse_dns_lookups_total"

PTR = {
    "10.0.0.222": "provider.shop.svc.cluster.local",
    "10.0.0.7": "10-0-0-7.orders.shop.svc.cluster.local",  # an endpoint record
    "10.0.0.8": "10-0-0-8.shop.pod.cluster.local",  # a pod record: not a service
    "10.0.0.9": "host9.example.org",  # outside the cluster domain
    "10.0.0.10": ["zeta.shop.svc.cluster.local", "alpha.shop.svc.cluster.local"],
    "fd00:10::5": "ipv6.shop.svc.cluster.local",
}
SLOW = "1.0.10.in-addr.arpa"  # 10.0.1.x: forwarded to a server that never answers


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[DnsMasq]:
    with DnsMasq(PTR, ttl=30, slow_zones=[SLOW]) as server:
        yield server


def config(server: DnsMasq | None = None, **extra: Any) -> dict[str, Any]:
    """A plugin config; with `server`, PTR lookups against it (extra `dns` keys merged in)."""
    out: dict[str, Any] = {"podCIDRs": ["10.0.0.0/16", "fd00:10::/64"], **extra}
    if server is not None:
        dns = {"server": "127.0.0.1", "port": server.port, "timeout": "300ms"}
        out["dns"] = {**dns, **out.get("dns", {})}
    return out


def authority_after(host: PluginHost, authority: str) -> tuple[str | None, Any]:
    host.new_exchange()
    step = host.request_headers({":authority": authority})
    return step.headers.get(":authority"), step


def plugin_of(host: PluginHost) -> ReverseDnsPlugin:
    plugin = host.chain.entries[0].plugin
    assert isinstance(plugin, ReverseDnsPlugin)
    return plugin


class TestStatic:
    CONFIG = config(
        static={
            "10.0.0.50": "exact.shop.svc.cluster.local",
            "10.0.3.0/24": "wide.shop.svc.cluster.local.",
            "10.0.3.128/25": "narrow.shop.svc.cluster.local",
            "fd00:10::/120": "six.shop.svc.cluster.local",
        }
    )

    def test_pod_ip_becomes_the_service_host(self) -> None:
        """An IP in the map: the service host, the port kept, the route re-evaluated."""
        host = PluginHost(ReverseDnsPlugin, self.CONFIG)
        authority, step = authority_after(host, "10.0.0.50:8080")
        assert authority == "exact.shop.svc.cluster.local:8080"
        assert step.clear_route_cache
        assert step.metadata["asm-proxy"]["reverse_dns_original_authority"] == "10.0.0.50:8080"

    def test_longest_prefix_wins(self) -> None:
        """CIDR entries: the most specific network containing the IP."""
        host = PluginHost(ReverseDnsPlugin, self.CONFIG)
        assert authority_after(host, "10.0.3.7")[0] == "wide.shop.svc.cluster.local"
        assert authority_after(host, "10.0.3.200:80")[0] == "narrow.shop.svc.cluster.local:80"

    def test_ipv6(self) -> None:
        """A bracketed IPv6 authority, with or without a port."""
        host = PluginHost(ReverseDnsPlugin, self.CONFIG)
        assert authority_after(host, "[fd00:10::7]:9090")[0] == "six.shop.svc.cluster.local:9090"
        assert authority_after(host, "[fd00:10::7]")[0] == "six.shop.svc.cluster.local"

    @pytest.mark.parametrize(
        "authority",
        [
            "10.1.0.50:8080",  # outside podCIDRs
            "10.0.0.51:8080",  # inside, but no name for it
            "api.example.com",
            "10.0.0.50.nip.io:80",
            "[fd00:20::1]:80",
            "",
            "[fd00:10::7",
            "1e100.net",
        ],
    )
    def test_other_hosts_are_untouched(self, authority: str) -> None:
        """Hosts that are not pod IPs with a name: left exactly as they were."""
        host = PluginHost(ReverseDnsPlugin, self.CONFIG)
        host.new_exchange()
        step = host.request_headers({":authority": authority})
        assert step.headers.get(":authority") == authority
        assert not step.clear_route_cache

    def test_ipv4_mapped_ipv6(self) -> None:
        """::ffff:10.0.0.50 is the IPv4 pod IP."""
        host = PluginHost(ReverseDnsPlugin, self.CONFIG)
        assert (
            authority_after(host, "[::ffff:10.0.0.50]:80")[0] == "exact.shop.svc.cluster.local:80"
        )


class TestDns:
    def test_ptr_name_becomes_the_host(self, dnsmasq: DnsMasq) -> None:
        """A service PTR name, trailing dot dropped; the port kept."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq))
        assert authority_after(host, "10.0.0.222:8080")[0] == "provider.shop.svc.cluster.local:8080"
        assert authority_after(host, "[fd00:10::5]:80")[0] == "ipv6.shop.svc.cluster.local:80"

    def test_endpoint_record_names_its_service(self, dnsmasq: DnsMasq) -> None:
        """<endpoint>.<svc>.<ns>.svc.cluster.local. names the service <svc>.<ns>.svc.cluster.local."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq))
        assert authority_after(host, "10.0.0.7:8080")[0] == "orders.shop.svc.cluster.local:8080"

    def test_non_service_names_are_no_answer(self, dnsmasq: DnsMasq) -> None:
        """Pod records and names outside the cluster domain leave the Host alone..."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq))
        assert authority_after(host, "10.0.0.8:8080")[0] == "10.0.0.8:8080"
        assert authority_after(host, "10.0.0.9:8080")[0] == "10.0.0.9:8080"
        assert host.metric("asm_proxy_plugin_reverse_dns_hosts_total", result="no_name") == 2

    def test_any_name(self, dnsmasq: DnsMasq) -> None:
        """...unless anyName is set (pod records of the cluster still are not services)."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq, dns={"anyName": True}))
        assert authority_after(host, "10.0.0.9:8080")[0] == "host9.example.org:8080"
        assert authority_after(host, "10.0.0.8:8080")[0] == "10.0.0.8:8080"

    def test_several_names_pick_the_first_alphabetically(self, dnsmasq: DnsMasq) -> None:
        """Several PTR records: the choice does not depend on the answer's order."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq))
        assert authority_after(host, "10.0.0.10")[0] == "alpha.shop.svc.cluster.local"

    def test_sources_in_configured_order(self, dnsmasq: DnsMasq) -> None:
        """dns before static: DNS wins where it has a name, the static map fills the gaps."""
        static = {
            "10.0.0.222": "static-a.shop.svc.cluster.local",
            "10.0.0.99": "static-b.x.svc.cluster.local",
        }
        dns_first = PluginHost(
            ReverseDnsPlugin, config(dnsmasq, static=static, sources=["dns", "static"])
        )
        assert authority_after(dns_first, "10.0.0.222")[0] == "provider.shop.svc.cluster.local"
        assert authority_after(dns_first, "10.0.0.99")[0] == "static-b.x.svc.cluster.local"
        static_first = PluginHost(ReverseDnsPlugin, config(dnsmasq, static=static))
        assert authority_after(static_first, "10.0.0.222")[0] == "static-a.shop.svc.cluster.local"
        assert static_first.metric(QUERIES, answered_by="query") == 0


class TestCache:
    def test_answers_are_cached_for_their_ttl(self, dnsmasq: DnsMasq) -> None:
        """A second request for the same IP asks nobody; the entry lives for the record's
        TTL (30s from dnsmasq) within minTtl..maxTtl."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq, cache={"maxTtl": "20s"}))
        before = dnsmasq.queries("10.0.0.7")
        for _ in range(3):
            assert authority_after(host, "10.0.0.7:1")[0] == "orders.shop.svc.cluster.local:1"
        dnsmasq.sync()
        assert dnsmasq.queries("10.0.0.7") == before + 1
        plugin = plugin_of(host)
        assert host.metric(QUERIES, answered_by="cache") == 2
        entry = next(iter(plugin.cache.values()))
        remaining = entry.expires - host.now()
        assert 19 < remaining <= 20

    def test_expired_answers_are_looked_up_again(self, dnsmasq: DnsMasq) -> None:
        """Past its TTL (maxTtl 50ms here) an entry is asked for again."""
        host = PluginHost(
            ReverseDnsPlugin, config(dnsmasq, cache={"maxTtl": "50ms", "minTtl": "10ms"})
        )
        authority_after(host, "10.0.0.222")
        host.run(asyncio.sleep(0.08))
        authority_after(host, "10.0.0.222")
        assert host.metric(QUERIES, answered_by="query") == 2

    def test_negative_answers_are_cached_briefly(self, dnsmasq: DnsMasq) -> None:
        """NXDOMAIN and non-service names are remembered for negativeTtl."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq, cache={"negativeTtl": "2s"}))
        before = dnsmasq.queries("10.0.0.77")
        for _ in range(3):
            assert authority_after(host, "10.0.0.77:80")[0] == "10.0.0.77:80"
        dnsmasq.sync()
        assert dnsmasq.queries("10.0.0.77") == before + 1
        entry = plugin_of(host).cache[next(iter(plugin_of(host).cache))]
        assert entry.host is None
        assert 1 < entry.expires - host.now() <= 2

    def test_cache_is_bounded(self, dnsmasq: DnsMasq) -> None:
        """At maxEntries the least recently used IP goes first."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq, cache={"maxEntries": 2}))
        for ip in ("10.0.0.222", "10.0.0.7", "10.0.0.222", "10.0.0.10"):
            authority_after(host, ip)
        plugin = plugin_of(host)
        assert [str(ip) for ip in plugin.cache] == ["10.0.0.222", "10.0.0.10"]
        authority_after(host, "10.0.0.7")
        assert host.metric(QUERIES, answered_by="query") == 4


class TestFailures:
    def test_slow_lookup_fail_open_leaves_the_host(self, dnsmasq: DnsMasq) -> None:
        """A lookup past the plugin's timeout: FAIL_OPEN, the Host stays as it was."""
        with PluginHost(
            ReverseDnsPlugin, config(dnsmasq), fail_strategy=FailStrategy.FAIL_OPEN, timeout=0.05
        ) as host:
            authority, step = authority_after(host, "10.0.1.5:8080")
        assert authority == "10.0.1.5:8080"
        assert step.immediate is None

    def test_slow_lookup_fail_close_answers_500(self, dnsmasq: DnsMasq) -> None:
        """The same with FAIL_CLOSE: a 500 naming the plugin."""
        with PluginHost(ReverseDnsPlugin, config(dnsmasq), name="rdns", timeout=0.05) as host:
            _, step = authority_after(host, "10.0.1.6:8080")
        assert step.immediate is not None
        assert (step.immediate.status, step.immediate.details) == (
            500,
            "asm_proxy_plugin_timeout:rdns",
        )

    def test_lookup_outlives_the_request_and_failure_is_remembered(self, dnsmasq: DnsMasq) -> None:
        """The abandoned lookup runs to its own timeout (300ms) in the background; its
        failure is then cached for errorTtl, so the next request fails at once instead of
        waiting again."""
        host = PluginHost(
            ReverseDnsPlugin,
            config(dnsmasq, cache={"errorTtl": "5s"}),
            fail_strategy=FailStrategy.FAIL_OPEN,
            timeout=0.05,
        )
        plugin = plugin_of(host)
        authority_after(host, "10.0.1.7:80")
        assert len(plugin.inflight) == 1
        host.run(asyncio.gather(*plugin.inflight.values(), return_exceptions=True))
        assert not plugin.inflight
        entry = next(iter(plugin.cache.values()))
        assert entry.error == "timeout"
        authority, step = authority_after(host, "10.0.1.7:80")
        assert (authority, step.immediate) == ("10.0.1.7:80", None)
        assert host.metric(QUERIES, answered_by="query") == 1  # from the remembered failure
        assert host.metric(QUERIES, answered_by="cache") == 1

    def test_unreachable_server(self) -> None:
        """No DNS server listening: the lookup fails within the hook's time (the plugin
        raises), FAIL_OPEN leaves the Host alone, and the failure is remembered."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        dns = {"server": "127.0.0.1", "port": port, "timeout": "60ms"}
        cfg = {"podCIDRs": ["10.0.0.0/16"], "dns": dns}
        host = PluginHost(ReverseDnsPlugin, cfg, fail_strategy=FailStrategy.FAIL_OPEN, timeout=0.15)
        authority, step = authority_after(host, "10.0.0.222:8080")
        assert authority == "10.0.0.222:8080"
        assert step.immediate is None
        assert not plugin_of(host).inflight
        (entry,) = plugin_of(host).cache.values()
        assert entry.error == "timeout"


def _run_concurrently(host: PluginHost, authorities: list[str]) -> list[tuple[str, float]]:
    """Several exchanges at once: each one's :authority after the plugin, and when (loop
    time) its answer was ready."""
    steps = host.request_headers_at_once([{":authority": authority} for authority in authorities])
    return [(step.headers[":authority"], step.at) for step in steps]


class TestConcurrency:
    def test_concurrent_lookups_for_one_ip_are_coalesced(self, dnsmasq: DnsMasq) -> None:
        """Eight requests for a new IP at once: one DNS query, eight rewrites."""
        host = PluginHost(ReverseDnsPlugin, config(dnsmasq))
        before = dnsmasq.queries("10.0.0.222")
        results = _run_concurrently(host, ["10.0.0.222:8080"] * 8)
        assert [a for a, _ in results] == ["provider.shop.svc.cluster.local:8080"] * 8
        dnsmasq.sync()
        assert dnsmasq.queries("10.0.0.222") == before + 1
        assert host.metric(QUERIES, answered_by="coalesced") == 7

    def test_a_slow_lookup_blocks_no_other_request(self, dnsmasq: DnsMasq) -> None:
        """While one request waits for a slow lookup, others (static, cached, other IPs)
        are answered at once."""
        with PluginHost(
            ReverseDnsPlugin,
            config(dnsmasq, static={"10.0.0.50": "static.shop.svc.cluster.local"}),
            fail_strategy=FailStrategy.FAIL_OPEN,
            timeout=0.1,
        ) as host:
            start = host.now()
            authorities = ["10.0.1.9:80", "10.0.0.50:80", "10.0.0.222:80", "example.com"]
            results = _run_concurrently(host, authorities)
        (slow, t_slow), *fast = results
        assert slow == "10.0.1.9:80"  # timed out, FAIL_OPEN
        assert t_slow - start >= 0.09
        assert [a for a, _ in fast] == [
            "static.shop.svc.cluster.local:80",
            "provider.shop.svc.cluster.local:80",
            "example.com",
        ]
        assert all(t < t_slow for _, t in fast)  # none waited for the slow lookup


class TestConfig:
    @pytest.mark.parametrize(
        ("cfg", "message"),
        [
            ({"podCIDRs": []}, "at least 1"),
            ({"podCIDRs": ["10.0.0.0/33"], "static": {}}, "not an IP network"),
            ({"podCIDRs": ["10.0.0.1/16"], "static": {}}, "host bits"),
            ({"podCIDRs": ["10.0.0.0/16"]}, "nothing to look up"),
            ({"podCIDRs": ["10.0.0.0/16"], "static": {"10.1.0.1": "a.b"}}, "outside podCIDRs"),
            (
                {"podCIDRs": ["10.0.0.0/16"], "static": {"10.0.0.1": "not a host"}},
                "not a host name",
            ),
            (
                {"podCIDRs": ["10.0.0.0/16"], "static": {"10.0.0.1": "a.b"}, "sources": ["dns"]},
                "not configured",
            ),
            (
                {
                    "podCIDRs": ["10.0.0.0/16"],
                    "static": {"10.0.0.1": "a.b"},
                    "sources": ["static", "static"],
                },
                "repeat",
            ),
            ({"podCIDRs": ["10.0.0.0/16"], "dns": {"server": "kube-dns"}}, "IP address"),
            (
                {
                    "podCIDRs": ["10.0.0.0/16"],
                    "dns": {"server": "10.96.0.10"},
                    "cache": {"minTtl": "6m"},
                },
                "minTtl",
            ),
            (
                {"podCIDRs": ["10.0.0.0/16"], "dns": {"server": "10.96.0.10", "timeout": "0s"}},
                "timeout",
            ),
        ],
    )
    def test_bad_config_is_refused(self, cfg: dict[str, Any], message: str) -> None:
        """Mistakes, and entries that could never apply, are refused at load time."""
        with pytest.raises(ValidationError, match=message):
            ReverseDnsPlugin.Config.model_validate(cfg)


# A PTR name maps to a host only in the documented ways, whatever DNS sends.
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(LABEL, min_size=1, max_size=6), st.booleans())
def test_ptr_names_map_only_to_service_hosts(labels: list[str], any_name: bool) -> None:
    """Any PTR name: the result is None, or a host that is the name itself (a service or,
    with anyName, an outside name) or the name without its first label (an endpoint)."""
    plugin = ReverseDnsPlugin(
        ReverseDnsPlugin.Config.model_validate(
            {"podCIDRs": ["10.0.0.0/8"], "dns": {"server": "127.0.0.1", "anyName": any_name}}
        )
    )
    for suffix in ([], ["svc", "cluster", "local"], ["pod", "cluster", "local"]):
        name = ".".join(labels + suffix) + "."
        got = plugin.service_host(name)
        full = name.rstrip(".")
        if suffix == ["svc", "cluster", "local"] and len(labels) in (2, 3):
            assert got == ".".join(labels[-2:] + suffix)
        elif full.endswith(".cluster.local") or full == "cluster.local":
            assert got is None
        else:
            assert got == (full if any_name else None)


@given(st.text(max_size=60))
def test_any_authority_is_safe(authority: str) -> None:
    """Whatever the client sends as Host, the plugin either leaves it or maps a pod IP."""
    plugin = ReverseDnsPlugin(
        ReverseDnsPlugin.Config.model_validate(
            {"podCIDRs": ["10.0.0.0/8"], "static": {"10.0.0.0/8": "s.n.svc.cluster.local"}}
        )
    )
    from asm_proxy.api import split_host_port

    ip = plugin.pod_ip(split_host_port(authority)[0])
    assert ip is None or str(ip).startswith("10.")


def test_missing_dnsmasq_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without dnsmasq the DNS tests fail with instructions, they are never skipped."""
    from tests.support import dnsmasq as support

    monkeypatch.setattr(support.shutil, "which", lambda name: None)
    monkeypatch.setattr(support, "_CANDIDATES", ("/nonexistent/dnsmasq",))
    with pytest.raises(RuntimeError, match="scripts/setup"):
        DnsMasq({}).start()
