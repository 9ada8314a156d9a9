"""asm-proxy's own inbound sidecar, as in the `central` overlay (docs/DEPLOYMENT.md): an Envoy
that terminates the callers' mTLS on asm-proxy's port, verifies their certificates, sets
x-forwarded-client-cert as Istio's sidecar does (APPEND_FORWARD: a caller's own XFCC is
kept and the element of the certificate this Envoy verified is appended, with its URI
SAN), and passes the gRPC calls on to asm-proxy on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asm_proxy.envoy_cluster import asm_proxy_cluster
from tests.support.certs import Issued

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LOCAL_CLUSTER = "inbound_asm_proxy"


def inbound_sidecar(target: str, *, served: Issued, ca: Path) -> dict[str, Any]:
    """A bootstrap listening on 127.0.0.1 (ephemeral port) with `served`'s certificate,
    requiring a client certificate signed by `ca`, forwarding to asm-proxy at `target`."""
    tls = {
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(served.cert)},
                    "private_key": {"filename": str(served.key)},
                }
            ],
            "validation_context": {"trusted_ca": {"filename": str(ca)}},
        },
    }
    manager = {
        "@type": _HCM,
        "stat_prefix": "inbound",
        "codec_type": "AUTO",
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "asm-proxy",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": LOCAL_CLUSTER, "timeout": "0s"},
                        }
                    ],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    local = asm_proxy_cluster([target], name=LOCAL_CLUSTER, health_checks=False)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {"@type": _TLS, **tls},
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [local],
        },
    }
