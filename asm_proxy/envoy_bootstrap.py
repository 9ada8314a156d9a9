"""Envoy bootstraps that put asm-proxy in front of upstreams: for the demo and the tests.

Plain dicts; the real Envoy is their judge (it loads them, or `envoy_process.validate_config`
has it check one). The asm-proxy cluster, the filters' `grpc_service` and the runtime flags
come from `envoy_cluster` (health checks, outlier detection, retries: what drains and
restarts rely on), which `asm-proxy render` builds on too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asm_proxy.envoy_cluster import (
    ASM_PROXY_CLUSTER,  # noqa: F401 - re-exported: tests and perf name the cluster
    AUTHZ_SERVICE,
    EXT_PROC_SERVICE,
    MAX_REQUESTS_PER_CONNECTION,
    address,
    asm_proxy_cluster,
    grpc_service,
    layered_runtime,
)

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
#: asm-proxy's endpoints over HTTP/1.1, for ext_authz's http_service.
ASM_PROXY_HTTP_CLUSTER = "asm_proxy_http"


#: The JSON access log line the demo and tests use (metadata under the server's namespace).
def access_log_format(namespace: str, keys: tuple[str, ...] = ()) -> dict[str, str]:
    fmt = {
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "authority": "%REQ(:AUTHORITY)%",
        "code": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "metadata": f"%DYNAMIC_METADATA({namespace})%",
        "authz_metadata": f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER})%",
    }
    for key in keys:
        fmt[f"md_{key}"] = f"%DYNAMIC_METADATA({namespace}:{key})%"
    return fmt


@dataclass
class ExtProc:
    """The ext_proc filter's settings (the fields tests and the demo vary)."""

    request_header_mode: str = "SEND"
    response_header_mode: str = "SEND"
    request_body_mode: str = "NONE"
    response_body_mode: str = "NONE"
    request_trailer_mode: str = "SKIP"
    response_trailer_mode: str = "SKIP"
    allow_mode_override: bool = True
    failure_mode_allow: bool = False
    message_timeout: str = "0.2s"
    observability_mode: bool = False
    send_body_without_waiting_for_header_response: bool = False
    request_attributes: list[str] = field(default_factory=list)
    metadata_namespace: str = "asm-proxy"
    allow_all_routing: bool = True  # let asm-proxy change :authority/host (reverse_dns)
    retries: bool = True  # a stream asm-proxy could not take is tried on another endpoint

    def filter(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": grpc_service(retries=self.retries),
            "failure_mode_allow": self.failure_mode_allow,
            "message_timeout": self.message_timeout,
            "allow_mode_override": self.allow_mode_override,
            "processing_mode": {
                "request_header_mode": self.request_header_mode,
                "response_header_mode": self.response_header_mode,
                "request_body_mode": self.request_body_mode,
                "response_body_mode": self.response_body_mode,
                "request_trailer_mode": self.request_trailer_mode,
                "response_trailer_mode": self.response_trailer_mode,
            },
            "metadata_options": {
                "receiving_namespaces": {"untyped": [self.metadata_namespace]},
            },
        }
        if self.allow_all_routing:
            config["mutation_rules"] = {"allow_all_routing": True}
        if self.observability_mode:
            config["observability_mode"] = True
        if self.send_body_without_waiting_for_header_response:
            config["send_body_without_waiting_for_header_response"] = True
        if self.request_attributes:
            config["request_attributes"] = list(self.request_attributes)
        return {"name": EXT_PROC_FILTER, "typed_config": config}


@dataclass
class ExtAuthz:
    failure_mode_allow: bool = False
    with_request_body: bool = False
    timeout: str = "0.25s"
    context_extensions: dict[str, str] = field(default_factory=dict)
    retries: bool = True
    #: Ask over plain HTTP (Envoy's http_service) with this path prefix instead of gRPC
    #: (asm-proxy's `httpAuthzPrefix`; the nghttp2 transport serves it on the same address).
    http_prefix: str | None = None
    #: Over HTTP: the response headers Envoy copies to the upstream request (exact names):
    #: every header a plugin sets, appends to or adds if absent.
    upstream_headers: tuple[str, ...] = ("x-user", "x-groups", "x-tenant", "x-consumer")

    def filter(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": self.failure_mode_allow,
        }
        # Header values byte for byte, over HTTP as over gRPC (without it Envoy sends the
        # HTTP service "!" for each byte that is not UTF-8).
        config["encode_raw_headers"] = True
        if self.http_prefix is None:
            config["grpc_service"] = grpc_service(timeout=self.timeout, retries=self.retries)
        else:
            config["http_service"] = {
                "server_uri": {
                    "uri": "http://asm-proxy",
                    "cluster": ASM_PROXY_HTTP_CLUSTER,
                    "timeout": self.timeout,
                },
                "path_prefix": self.http_prefix,
                "authorization_request": {
                    # Every request header, as the gRPC path gets them.
                    "allowed_headers": {"patterns": [{"safe_regex": {"regex": ".*"}}]},
                },
                "authorization_response": {
                    "allowed_upstream_headers": {
                        "patterns": [{"exact": name} for name in self.upstream_headers]
                    },
                    "dynamic_metadata_from_headers": {"patterns": [{"prefix": "x-asm-proxy-md-"}]},
                },
            }
        if self.with_request_body:
            config["with_request_body"] = {
                "max_request_bytes": 65536,
                "allow_partial_message": True,
            }
        return {"name": EXT_AUTHZ_FILTER, "typed_config": config}


@dataclass
class Route:
    """A virtual host: these domains go to this cluster."""

    cluster: str
    domains: list[str] = field(default_factory=lambda: ["*"])
    prefix: str = "/"
    #: Envoy's route timeout; "0s" for long-lived streams (gRPC push streams).
    timeout: str = "10s"


@dataclass
class Setup:
    """Everything one Envoy needs: asm-proxy's address, upstreams, filters, routes, log."""

    #: "127.0.0.1:PORT" or "unix:/path"; a list for one endpoint per worker (Unix sockets).
    asm_proxy: str | list[str]
    clusters: dict[str, int]  # name -> port on 127.0.0.1
    routes: list[Route]
    ext_proc: ExtProc | None = field(default_factory=ExtProc)
    ext_authz: ExtAuthz | None = None
    access_log: str | None = None
    access_log_keys: tuple[str, ...] = ()
    listen_port: int = 0
    node_metadata: dict[str, Any] = field(default_factory=dict)
    node_id: str = "asm-proxy-test"
    #: Streams Envoy puts on one HTTP/2 connection to asm-proxy at a time before it opens
    #: another (None: no cap).
    asm_proxy_max_streams: int | None = None
    #: Streams one connection to asm-proxy carries in all before Envoy replaces it (None: no
    #: limit). On TCP this is what spreads the streams over the workers.
    asm_proxy_max_requests_per_connection: int | None = MAX_REQUESTS_PER_CONNECTION
    #: gRPC health checks on the asm-proxy cluster (what makes a drain invisible).
    asm_proxy_health_checks: bool = True
    #: Eject an endpoint that refuses connections (a dead worker's socket) until it is healthy.
    asm_proxy_outlier_detection: bool = True
    #: The runtime flags of envoy_cluster.RUNTIME_FLAGS (graceful ext_proc stream close).
    runtime_flags: bool = True
    #: Clusters (names in `clusters`) that speak gRPC: HTTP/2 upstream, and one upstream
    #: connection per client connection (a Nacos 2 server ties a client's calls and pushes
    #: to its connection, so clients must not share one).
    grpc_clusters: tuple[str, ...] = ()


def http_authz_cluster(targets: list[str]) -> dict[str, Any]:
    """asm-proxy's endpoints over HTTP/1.1 (ext_authz's http_service): outlier detection as
    on the gRPC cluster (a refused connection ejects), and HTTP health checks of /healthz
    (503 once an instance drains), so Envoy leaves a draining instance as on gRPC."""
    cluster = asm_proxy_cluster(
        targets,
        name=ASM_PROXY_HTTP_CLUSTER,
        health_check_path="/healthz",
        max_requests_per_connection=None,
    )
    options = cluster["typed_extension_protocol_options"]
    for value in options.values():
        value["explicit_http_config"] = {"http_protocol_options": {}}
    return cluster


def _upstream_cluster(name: str, port: int, grpc: bool = False) -> dict[str, Any]:
    """An upstream on 127.0.0.1: HTTP/1.1, or for `grpc` HTTP/2 with one upstream
    connection per client connection."""
    protocol: dict[str, Any] = (
        {"http2_protocol_options": {}}
        if grpc
        else {"http_protocol_options": {"enable_trailers": True}}
    )
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": protocol,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address(f"127.0.0.1:{port}")}}]}
            ],
        },
    }
    if grpc:
        cluster["connection_pool_per_downstream_connection"] = True
    return cluster


def bootstrap(setup: Setup) -> dict[str, Any]:
    http_filters = []
    if setup.ext_authz is not None:
        http_filters.append(setup.ext_authz.filter())
    if setup.ext_proc is not None:
        http_filters.append(setup.ext_proc.filter())
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    virtual_hosts = []
    for i, route in enumerate(setup.routes):
        vhost: dict[str, Any] = {
            "name": f"vhost_{i}_{route.cluster}",
            "domains": route.domains,
            "routes": [
                {
                    "match": {"prefix": route.prefix},
                    "route": {"cluster": route.cluster, "timeout": route.timeout},
                }
            ],
        }
        if setup.ext_authz is not None and setup.ext_authz.context_extensions:
            vhost["typed_per_filter_config"] = {
                EXT_AUTHZ_FILTER: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                    "check_settings": {"context_extensions": setup.ext_authz.context_extensions},
                }
            }
        virtual_hosts.append(vhost)
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "http_protocol_options": {"enable_trailers": True},
        "route_config": {"name": "local", "virtual_hosts": virtual_hosts},
        "http_filters": http_filters,
    }
    if setup.access_log:
        namespace = setup.ext_proc.metadata_namespace if setup.ext_proc else "asm-proxy"
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": setup.access_log,
                    "log_format": {
                        "json_format": access_log_format(namespace, setup.access_log_keys)
                    },
                },
            }
        ]
    targets = setup.asm_proxy if isinstance(setup.asm_proxy, list) else [setup.asm_proxy]
    clusters = [
        asm_proxy_cluster(
            targets,
            max_streams=setup.asm_proxy_max_streams,
            max_requests_per_connection=setup.asm_proxy_max_requests_per_connection,
            health_checks=setup.asm_proxy_health_checks,
            outlier_detection=setup.asm_proxy_outlier_detection,
            health_check_service=(
                AUTHZ_SERVICE if setup.ext_proc is None and setup.ext_authz else EXT_PROC_SERVICE
            ),
        )
    ]
    if setup.ext_authz is not None and setup.ext_authz.http_prefix is not None:
        clusters.append(http_authz_cluster(targets))
    clusters += [
        _upstream_cluster(name, port, grpc=name in setup.grpc_clusters)
        for name, port in setup.clusters.items()
    ]
    config: dict[str, Any] = {
        "node": {"id": setup.node_id, "cluster": "asm-proxy", "metadata": setup.node_metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": setup.listen_port}
                    },
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
            "clusters": clusters,
        },
    }
    if setup.runtime_flags:
        config["layered_runtime"] = layered_runtime()
    return config
