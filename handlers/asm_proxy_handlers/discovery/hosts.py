"""The host a registry's service becomes: one config shape and one mapping for every adapter.

    hostTemplate: "{service}.{namespace}.svc.cluster.local"
    services: {legacy-billing: billing.finance.svc.cluster.local}
    ports: {provider: 8080}
    namespaces: {0b9f7e3c-shop: shop}
    defaultNamespace: default

An adapter names the fields its registry has (`template_fields`: Nacos has groups, Consul
datacenters, Eureka neither) and the keys a service is known by in `services` and `ports`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, field_validator

from asm_proxy.api import PluginConfig, normalize_host

#: Results cached per HostMap before the cache starts over (answers repeat the same few).
CACHE_SIZE = 4096


def _host_value(value: str) -> str:
    host = normalize_host(value)
    if host is None:
        raise ValueError(f"{value!r} is not a host name")
    return host


class DiscoveryConfig(PluginConfig):
    """What every registry plugin is configured with."""

    #: Template fields this registry fills (the adapter's class sets it).
    template_fields: ClassVar[frozenset[str]] = frozenset({"service", "namespace"})

    #: The host an instance of a service becomes.
    host_template: str = "{service}.{namespace}.svc.cluster.local"
    #: Explicit service -> host (keys as the adapter documents them).
    services: dict[str, str] = Field(default_factory=dict)
    #: Service -> the port every instance of it gets.
    ports: dict[str, int] = Field(default_factory=dict)
    #: Registry namespace -> the `{namespace}` of the template (a Kubernetes namespace).
    namespaces: dict[str, str] = Field(default_factory=dict)
    #: `{namespace}` for the registry's default namespace (or a registry without any).
    default_namespace: str = "default"

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"template {value!r}: {exc}") from None
        for name in fields:
            if name not in cls.template_fields:
                allowed = ", ".join("{" + f + "}" for f in sorted(cls.template_fields))
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


@dataclass(frozen=True, slots=True)
class Target:
    """Where the instances of one service go."""

    service: str
    host: str
    port: int | None
    group: str = ""
    namespace_id: str = ""


class HostMap:
    """Service -> Target, from a DiscoveryConfig; results cached (bounded)."""

    __slots__ = (
        "_cache",
        "_namespaced",
        "default_namespace",
        "default_namespace_ids",
        "namespaces",
        "ports",
        "services",
        "template",
    )

    def __init__(self, config: DiscoveryConfig, default_namespace_ids: frozenset[str]) -> None:
        self.template = config.host_template
        self.services = dict(config.services)
        self.ports = dict(config.ports)
        self.namespaces = dict(config.namespaces)
        self.default_namespace = config.default_namespace
        #: The registry's names for its default namespace ("" always counts).
        self.default_namespace_ids = default_namespace_ids | {""}
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        self._namespaced = bool(fields & {"namespace", "namespaceId"})
        self._cache: dict[
            tuple[str, tuple[str, ...], str, tuple[tuple[str, str], ...]], Target | str
        ] = {}

    def needs_namespace(self, keys: tuple[str, ...]) -> bool:
        """Whether the host of a service known by `keys` depends on its namespace."""
        return self._namespaced and not any(k in self.services for k in keys)

    def namespace_of(self, namespace_id: str) -> str:
        mapped = self.namespaces.get(namespace_id)
        if mapped is not None:
            return mapped
        if namespace_id in self.default_namespace_ids:
            return self.default_namespace
        return namespace_id

    def resolve(
        self,
        service: str,
        keys: tuple[str, ...],
        *,
        namespace_id: str = "",
        fields: Mapping[str, str] | None = None,
    ) -> Target | str:
        """The Target of `service` (looked up in `services`/`ports` by `keys`, in order), or
        the reason there is none ("unmappable": the template makes no host name)."""
        extra = tuple(sorted(fields.items())) if fields else ()
        key = (service, keys, namespace_id, extra)
        found = self._cache.get(key)
        if found is not None:
            return found
        found = self._resolve(service, keys, namespace_id, dict(extra))
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _resolve(
        self, service: str, keys: tuple[str, ...], namespace_id: str, fields: dict[str, str]
    ) -> Target | str:
        host = next((self.services[k] for k in keys if k in self.services), None)
        if host is None:
            shown_id = namespace_id or next(iter(sorted(self.default_namespace_ids - {""})), "")
            values = {
                **fields,
                "service": service,
                "namespace": self.namespace_of(namespace_id),
                "namespaceId": shown_id,
            }
            host = self.template.format(**values).lower()
            if normalize_host(host) != host:
                return "unmappable"
        port = next((self.ports[k] for k in keys if k in self.ports), None)
        return Target(service, host, port, fields.get("group", ""), namespace_id)
