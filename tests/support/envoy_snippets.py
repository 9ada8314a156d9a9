"""Envoy config snippets from the docs, checked by the real Envoy (`--mode validate`).

A snippet is a piece of a bootstrap: HTTP filters, an access log, a cluster. Each is put
where it belongs in an otherwise minimal bootstrap, with the clusters it names, and the
whole is handed to Envoy: what Envoy accepts is right, whatever a generated package says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asm_proxy.envoy_process import validate_config

_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _cluster_names(node: Any) -> set[str]:
    """Every `cluster_name` / `cluster` a snippet refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("cluster_name", "cluster") and isinstance(value, str):
                found.add(value)
            else:
                found |= _cluster_names(value)
    elif isinstance(node, list):
        for item in node:
            found |= _cluster_names(item)
    return found


def _ends_with_router(filters: Sequence[dict[str, Any]]) -> bool:
    return bool(filters) and filters[-1].get("name") == _ROUTER["name"]


def validate_snippets(
    *,
    filters: Sequence[dict[str, Any]] = (),
    access_logs: Sequence[dict[str, Any]] = (),
    clusters: Sequence[dict[str, Any]] = (),
) -> None:
    """Have Envoy load a bootstrap made of these pieces; raises EnvoyError if it refuses."""
    own = {c["name"] for c in clusters}
    needed = _cluster_names([list(filters), list(access_logs)]) - own - {"upstream"}
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
        "http_filters": [*filters, *([] if _ends_with_router(filters) else [_ROUTER])],
    }
    if access_logs:
        hcm["access_log"] = list(access_logs)
    validate_config(
        {
            "static_resources": {
                "listeners": [
                    {
                        "name": "snippets",
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm,
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "clusters": [
                    _cluster("upstream"),
                    *clusters,
                    *(_cluster(n) for n in sorted(needed)),
                ],
            }
        }
    )
