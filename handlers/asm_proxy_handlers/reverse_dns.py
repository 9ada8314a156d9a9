"""reverse_dns: a request addressed to a pod IP gets its service's host name as Host.

    - name: reverse-dns
      type: reverse_dns
      failStrategy: FAIL_OPEN
      timeout: 100ms
      config:
        podCIDRs: [10.244.0.0/16, "fd00:10:244::/56"]
        static: {10.244.1.17: legacy.shop.svc.cluster.local}
        dns: {server: 10.96.0.10}

Clients that learnt pod IPs (from a registry, a headless service, a cache) call
`10.244.3.7:8080`; Envoy can only route that by IP. For an `:authority` that is an IP inside
`podCIDRs`, this plugin finds the service's host name (a static map, then a DNS PTR lookup,
in the order configured) and sets `:authority` to it, keeping the port; asm-proxy then makes
Envoy route the request again (route cache cleared).

PTR names map to hosts like this (trailing dot dropped, lower case):
`<svc>.<ns>.svc.<clusterDomain>` is used as is; `<endpoint>.<svc>.<ns>.svc.<clusterDomain>`
(the record cluster DNS serves for a service's endpoint) becomes
`<svc>.<ns>.svc.<clusterDomain>`; other names (pod records, names outside the cluster domain)
are not service names and count as no answer, unless `dns.anyName` is set. If several
names qualify the alphabetically first is taken, so the choice does not change with the
order of the answer.

Lookups run as tasks of their own: concurrent requests for one IP share one query, a query
outlives a request that stopped waiting for it (its answer fills the cache for the next),
and no request waits for another's lookup. Answers are cached for their TTL (clamped to
`cache.minTtl`..`cache.maxTtl`), "no name" for `cache.negativeTtl`, a failed lookup
(timeout, SERVFAIL, REFUSED) for `cache.errorTtl`; the cache holds at most
`cache.maxEntries` IPs (least recently used go first). A failed lookup is a failure of the
hook, handled by the plugin's failStrategy: FAIL_OPEN leaves the Host as it was.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from pydantic import Field, field_validator, model_validator

from asm_proxy.api import Duration, Http, Plugin, PluginConfig, normalize_host, split_host_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP network: {exc}") from None


class DnsSettings(PluginConfig):
    #: The DNS server asked for PTR records (the cluster DNS service's IP when deployed).
    server: str
    port: int = 53
    #: How long one lookup may take; it goes on in the background after a request that
    #: stopped waiting (the plugin's `timeout`), so its answer can serve the next one.
    timeout: Duration = 1.0
    #: The cluster's DNS domain: PTR names `<svc>.<ns>.svc.<clusterDomain>` are services.
    cluster_domain: str = "cluster.local"
    #: Accept any PTR name as the host, not only service names under the cluster domain.
    any_name: bool = False

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"server {value!r} must be an IP address") from None

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is not in 1-65535")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be greater than zero")
        return value

    @field_validator("cluster_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        domain = normalize_host(value)
        if domain is None:
            raise ValueError(f"clusterDomain {value!r} is not a domain name")
        return domain


class CacheSettings(PluginConfig):
    max_entries: int = 10_000
    min_ttl: Duration = 1.0
    max_ttl: Duration = 300.0
    negative_ttl: Duration = 5.0
    error_ttl: Duration = 1.0

    @model_validator(mode="after")
    def _bounds(self) -> CacheSettings:
        if self.max_entries < 1:
            raise ValueError("maxEntries must be at least 1")
        if self.min_ttl > self.max_ttl:
            raise ValueError("minTtl must not be greater than maxTtl")
        return self


Source = Literal["static", "dns"]


class ReverseDnsConfig(PluginConfig):
    #: Only IPs inside these networks are looked up; any other Host is left alone.
    pod_cidrs: list[str] = Field(alias="podCIDRs", min_length=1)
    #: IP or CIDR -> host name. The longest matching prefix wins.
    static: dict[str, str] = Field(default_factory=dict)
    #: PTR lookups against this server.
    dns: DnsSettings | None = None
    #: The order to ask the sources in (default: static, then dns, those configured).
    sources: list[Source] | None = None
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @field_validator("pod_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [str(_network(text)) for text in value]

    @field_validator("static")
    @classmethod
    def _static(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, name in value.items():
            host = normalize_host(name)
            if host is None:
                raise ValueError(f"{key}: {name!r} is not a host name")
            out[str(_network(key))] = host
        return out

    @model_validator(mode="after")
    def _consistent(self) -> ReverseDnsConfig:
        pods = [ipaddress.ip_network(c) for c in self.pod_cidrs]
        for key in self.static:
            net = ipaddress.ip_network(key)
            if not any(net.version == p.version and net.subnet_of(p) for p in pods):  # type: ignore[arg-type]
                raise ValueError(f"static entry {key} is outside podCIDRs; it would never apply")
        configured = [s for s in ("static", "dns") if (self.static if s == "static" else self.dns)]
        if self.sources is None:
            if not configured:
                raise ValueError("configure `static`, `dns` or both: there is nothing to look up")
            return self
        if not self.sources:
            raise ValueError("sources must not be empty")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources must not repeat")
        for source in self.sources:
            if source not in configured:
                raise ValueError(f"source {source!r} is listed but `{source}` is not configured")
        return self

    def ordered_sources(self) -> list[Source]:
        if self.sources is not None:
            return list(self.sources)
        order: list[Source] = []
        if self.static:
            order.append("static")
        if self.dns is not None:
            order.append("dns")
        return order


class LookupFailed(Exception):
    """The DNS server did not answer usefully (timeout, SERVFAIL, REFUSED, network error)."""


@dataclass(slots=True)
class CacheEntry:
    host: str | None  # None: no name for this IP
    expires: float
    error: str | None = None  # a failed lookup, remembered for error_ttl


class ReverseDnsPlugin(Plugin):
    """Host from pod IP: a static map and DNS PTR lookups, cached."""

    Config = ReverseDnsConfig
    changes_routing = True  # it rewrites :authority

    def __init__(self, config: ReverseDnsConfig) -> None:
        super().__init__(config)
        self.pod_networks: dict[int, tuple[IPNetwork, ...]] = {
            version: tuple(
                n for n in map(ipaddress.ip_network, config.pod_cidrs) if n.version == version
            )
            for version in (4, 6)
        }
        self.static_ips: dict[IPAddress, str] = {}
        static_nets: list[tuple[IPNetwork, str]] = []
        for key, host in config.static.items():
            net = ipaddress.ip_network(key)
            if net.num_addresses == 1:
                self.static_ips[net.network_address] = host
            else:
                static_nets.append((net, host))
        # Longest prefix first, so the first containing network is the most specific.
        static_nets.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self.static_networks = tuple(static_nets)
        self.sources = config.ordered_sources()
        cache = config.cache
        self.max_entries = cache.max_entries
        self.min_ttl, self.max_ttl = cache.min_ttl, cache.max_ttl
        self.negative_ttl, self.error_ttl = cache.negative_ttl, cache.error_ttl
        self.cache: OrderedDict[IPAddress, CacheEntry] = OrderedDict()
        self.inflight: dict[IPAddress, asyncio.Task[str | None]] = {}
        #: How each lookup was answered (static, cache, query: a PTR query sent, coalesced:
        #: waited for another request's query) and what came of the pod-IP Hosts.
        self.lookups = self.counter(
            "reverse_dns_lookups_total",
            "Pod-IP lookups by how they were answered: static map, cache, a PTR query sent, "
            "or coalesced into another request's query",
            labels=["answered_by"],
        )
        self.results = self.counter(
            "reverse_dns_hosts_total",
            "Pod-IP Hosts by result: rewritten to a service name, or left (no name found)",
            labels=["result"],
        )
        self._static_hit = self.lookups.labels("static")
        self._cache_hit = self.lookups.labels("cache")
        self._query = self.lookups.labels("query")
        self._coalesced = self.lookups.labels("coalesced")
        self._rewritten = self.results.labels("rewritten")
        self._no_name = self.results.labels("no_name")
        self.resolver: dns.asyncresolver.Resolver | None = None
        self.dns = config.dns
        if self.dns is not None:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(self.dns.server, self.dns.port)]
            resolver.cache = None  # this plugin caches, with its own bounds
            resolver.lifetime = self.dns.timeout
            resolver.timeout = self.dns.timeout
            self.resolver = resolver
            suffix = ("svc", *self.dns.cluster_domain.split("."))
            self._service_suffix = suffix
        else:
            self._service_suffix = ()

    # -- which requests --------------------------------------------------------------------

    def pod_ip(self, host: str) -> IPAddress | None:
        """The IP `host` names if it is one inside podCIDRs, else None."""
        if not host or not (host[0].isdigit() or ":" in host):
            return None  # a host name: no need to try parsing it
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.pod_networks[ip.version]:
            if ip in net:
                return ip
        return None

    # -- sources ---------------------------------------------------------------------------

    def static_host(self, ip: IPAddress) -> str | None:
        host = self.static_ips.get(ip)
        if host is not None:
            return host
        for net, name in self.static_networks:
            if ip in net:
                return name
        return None

    def service_host(self, ptr_name: str) -> str | None:
        """The host a PTR name stands for (see the module docs), or None."""
        host = normalize_host(ptr_name)
        if host is None:
            return None
        dns_settings = self.dns
        assert dns_settings is not None
        labels = host.split(".")
        suffix = self._service_suffix
        if len(labels) > len(suffix) and tuple(labels[-len(suffix) :]) == suffix:
            head = labels[: -len(suffix)]
            if len(head) == 2:
                return host
            if len(head) == 3:
                return ".".join(labels[1:])
            return None
        if host == dns_settings.cluster_domain or host.endswith("." + dns_settings.cluster_domain):
            return None  # a pod record or another non-service name of the cluster
        return host if dns_settings.any_name else None

    async def dns_host(self, ip: IPAddress) -> str | None:
        """The service host for `ip` from the cache or a (shared) PTR lookup."""
        loop = asyncio.get_running_loop()
        entry = self.cache.get(ip)
        if entry is not None:
            if entry.expires > loop.time():
                self.cache.move_to_end(ip)
                self._cache_hit.inc()
                if entry.error is not None:
                    raise LookupFailed(f"PTR lookup for {ip} failed recently: {entry.error}")
                return entry.host
            del self.cache[ip]
        task = self.inflight.get(ip)
        if task is None:
            task = loop.create_task(self._lookup(ip), name=f"reverse_dns {ip}")
            self.inflight[ip] = task
            task.add_done_callback(lambda t: self._lookup_done(ip, t))
        else:
            self._coalesced.inc()
        # shield: a request that stops waiting (its timeout) does not cancel the lookup.
        return await asyncio.shield(task)

    def _lookup_done(self, ip: IPAddress, task: asyncio.Task[str | None]) -> None:
        if self.inflight.get(ip) is task:
            del self.inflight[ip]
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be waiting any more

    async def _lookup(self, ip: IPAddress) -> str | None:
        resolver = self.resolver
        assert resolver is not None
        self._query.inc()
        try:
            # dnspython may back off past its lifetime before giving up; hold it to ours.
            async with asyncio.timeout(resolver.lifetime):
                answer = await resolver.resolve_address(str(ip))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._remember(ip, None, self.negative_ttl)
            return None
        except (dns.exception.Timeout, TimeoutError) as exc:
            self._remember(ip, None, self.error_ttl, error="timeout")
            raise LookupFailed(f"PTR lookup for {ip} timed out") from exc
        except (dns.exception.DNSException, OSError) as exc:
            self._remember(ip, None, self.error_ttl, error=type(exc).__name__)
            raise LookupFailed(f"PTR lookup for {ip} failed: {exc}") from exc
        names = [self.service_host(rdata.target.to_text()) for rdata in answer]
        found = sorted(name for name in names if name is not None)
        rrset = answer.rrset
        ttl = float(rrset.ttl) if rrset is not None else self.min_ttl
        if not found:
            self._remember(ip, None, self.negative_ttl)
            return None
        self._remember(ip, found[0], min(max(ttl, self.min_ttl), self.max_ttl))
        return found[0]

    def _remember(
        self, ip: IPAddress, host: str | None, ttl: float, error: str | None = None
    ) -> None:
        cache = self.cache
        cache[ip] = CacheEntry(host, asyncio.get_running_loop().time() + ttl, error)
        cache.move_to_end(ip)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    async def host_for(self, ip: IPAddress) -> str | None:
        """The service host for a pod IP, asking the sources in order."""
        for source in self.sources:
            if source == "static":
                host = self.static_host(ip)
                if host is not None:
                    self._static_hit.inc()
                    return host
            else:
                host = await self.dns_host(ip)
                if host is not None:
                    return host
        self._no_name.inc()
        return None

    # -- the hook ----------------------------------------------------------------------------

    def on_request_headers(self, http: Http) -> Coroutine[Any, Any, None] | None:
        """Most Hosts are names, not pod IPs: those return at once, without the coroutine
        and time limit an `async def` hook costs; the others return the lookup to await."""
        authority = http.request.authority
        host, port = split_host_port(authority)
        ip = self.pod_ip(host)
        if ip is None:
            return None
        return self._rewrite(http, ip, port, authority)

    async def _rewrite(self, http: Http, ip: IPAddress, port: str | None, authority: str) -> None:
        name = await self.host_for(ip)
        if name is None:
            return
        http.request.authority = f"{name}:{port}" if port is not None else name
        http.set_metadata("reverse_dns_original_authority", authority)
        self._rewritten.inc()

    async def close(self) -> None:
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
