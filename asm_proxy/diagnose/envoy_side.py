"""What an Envoy config says about asm-proxy, wherever it comes from.

`diagnose` reads a bootstrap (YAML or JSON), Envoy's admin `/config_dump`, or what
`asm-proxy render` writes (an envoy fragment, an EnvoyFilter). All of them are Envoy's proto
JSON somewhere inside, so the filters, clusters and listeners are found by shape rather
than by path: an HTTP filter named `envoy.filters.http.ext_proc`, a cluster with a
`load_assignment`, a listener with `filter_chains`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

EXT_PROC = "envoy.filters.http.ext_proc"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
#: Envoy's default per-connection buffer limit (what a BUFFERED body may reach).
DEFAULT_BUFFER_LIMIT = 1024 * 1024


@dataclass
class EnvoySide:
    """The parts of one Envoy config that matter to asm-proxy."""

    ext_proc: list[dict[str, Any]] = field(default_factory=list)  # typed_configs
    ext_authz: list[dict[str, Any]] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Each listener's per_connection_buffer_limit_bytes (its default where unset).
    buffer_limits: list[int] = field(default_factory=list)
    #: The node's metadata (bootstrap or config_dump), when the config has it.
    node_metadata: dict[str, Any] | None = None

    def cluster_of(self, filter_config: dict[str, Any]) -> dict[str, Any] | None:
        name = filter_config.get("grpc_service", {}).get("envoy_grpc", {}).get("cluster_name")
        return self.clusters.get(name) if isinstance(name, str) else None


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _add(configs: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """A /config_dump shows a static filter twice (the bootstrap, and the listener as
    loaded): count each once."""
    if config not in configs:
        configs.append(config)


def envoy_side(*documents: Any) -> EnvoySide:
    """Collect the filters, clusters, listeners and node of one Envoy's config."""
    side = EnvoySide()
    for doc in documents:
        for node in _walk(doc):
            name = node.get("name")
            config = node.get("typed_config")
            if name == EXT_PROC and isinstance(config, dict):
                _add(side.ext_proc, config)
            elif name == EXT_AUTHZ and isinstance(config, dict):
                _add(side.ext_authz, config)
            elif isinstance(name, str) and "load_assignment" in node:
                side.clusters[name] = node
            if "filter_chains" in node:
                limit = node.get("per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT)
                side.buffer_limits.append(int(limit))
            node_info = node.get("node")
            if isinstance(node_info, dict) and isinstance(node_info.get("metadata"), dict):
                side.node_metadata = node_info["metadata"]
    return side
