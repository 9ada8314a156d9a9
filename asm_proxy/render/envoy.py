"""The Envoy side of asm-proxy, as Envoy's own typed messages (envoy-data-plane).

`filters()` gives the ext_proc filter (and the ext_authz filter with `authzVia: ext_authz`)
configured from `EnvoyNeeds`; `cluster()` the cluster that reaches asm-proxy in its
placement; `bootstrap()` a complete Envoy config around them. Messages are turned into
plain dicts (snake_case, `@type` for Any) for YAML.

What keeps a worker's death, a recycle or a drain from costing requests (health checks,
outlier detection, the `grpc_service` retry policy, `max_requests_per_connection`, the
graceful-close runtime flag) is asm_proxy.envoy_cluster's, the settings the reliability
drills prove: read here from there, never restated.

This is where envoy-data-plane belongs: building configuration, where types help and speed
does not matter; it is never imported on the request path.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

# envoy-data-plane's generated classes trip a pydantic deprecation warning when defined;
# it is theirs, harmless, and not ours to fix.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import betterproto2
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
        LayeredRuntime,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import (
        Cluster,
        ClusterDiscoveryType,
        ClusterDnsLookupFamily,
        OutlierDetection,
    )
    from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        ApiVersion,
        DataSource,
        GrpcService,
        Node,
        TransportSocket,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import BufferSettings, ExtAuthz
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
        ExternalProcessor,
        MetadataOptions,
        MetadataOptionsMetadataNamespaces,
        ProcessingMode,
        ProcessingModeBodySendMode,
        ProcessingModeHeaderSendMode,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpFilter,
    )

    # Imported for their registration: envoy_cluster's dicts hold Anys of these types.
    from envoy_data_plane.envoy.extensions.retry.host.previous_hosts import v3 as _hosts  # noqa: F401
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CertificateValidationContext,
        CommonTlsContext,
        SubjectAltNameMatcher,
        SubjectAltNameMatcherSanType,
        TlsCertificate,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http import v3 as _http  # noqa: F401
    from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
    from envoy_data_plane.google.protobuf import Any as AnyMessage

from asm_proxy import envoy_cluster
from asm_proxy.plugin import BodyAccess
from asm_proxy.render.needs import EnvoyNeeds
from asm_proxy.render.placement import Placement
from asm_proxy.wire import AUTHZ_SERVICE, EXT_PROC_SERVICE

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
CLUSTER_NAME = envoy_cluster.ASM_PROXY_CLUSTER

_BODY_MODES = {
    BodyAccess.NONE: ProcessingModeBodySendMode.NONE,
    BodyAccess.CHUNKS: ProcessingModeBodySendMode.STREAMED,
    BodyAccess.WHOLE: ProcessingModeBodySendMode.BUFFERED,
}


def as_dict(message: betterproto2.Message) -> dict[str, Any]:
    """A message as Envoy's YAML/JSON config reads it (proto field names, `@type` on Any)."""
    named: dict[str, Any] = _proto_names(message.to_dict(casing=betterproto2.Casing.SNAKE))
    return named


def _proto_names(value: Any) -> Any:
    """betterproto2 snake-cases `consecutive_5xx` as `consecutive_5_xx`, a name Envoy
    refuses; put the proto's names back."""
    if isinstance(value, dict):
        return {k.replace("_5_xx", "_5xx"): _proto_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_proto_names(v) for v in value]
    return value


def _seconds(value: float) -> timedelta:
    return timedelta(milliseconds=round(value * 1000))


def _send(flag: bool) -> ProcessingModeHeaderSendMode:
    return ProcessingModeHeaderSendMode.SEND if flag else ProcessingModeHeaderSendMode.SKIP


def ext_proc_filter(needs: EnvoyNeeds, cluster: str = CLUSTER_NAME) -> HttpFilter:
    config = ExternalProcessor(
        grpc_service=GrpcService.from_dict(envoy_cluster.grpc_service(cluster)),
        failure_mode_allow=needs.failure_mode_allow,
        message_timeout=_seconds(needs.message_timeout),
        allow_mode_override=needs.allow_mode_override,
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingModeHeaderSendMode.SEND,
            response_header_mode=_send(needs.response_headers),
            request_body_mode=_BODY_MODES[needs.request_body],
            response_body_mode=_BODY_MODES[needs.response_body],
            request_trailer_mode=_send(needs.request_trailers),
            response_trailer_mode=_send(needs.response_trailers),
        ),
        metadata_options=MetadataOptions(
            receiving_namespaces=MetadataOptionsMetadataNamespaces(
                untyped=list(needs.metadata_namespaces)
            )
        ),
        request_attributes=list(needs.request_attributes),
    )
    if needs.allow_all_routing:
        config.mutation_rules = HeaderMutationRules(allow_all_routing=True)
    return HttpFilter(name=EXT_PROC_FILTER, typed_config=AnyMessage.pack(config))


def ext_authz_filter(needs: EnvoyNeeds, cluster: str = CLUSTER_NAME) -> HttpFilter:
    config = ExtAuthz(
        grpc_service=GrpcService.from_dict(
            envoy_cluster.grpc_service(cluster, timeout=f"{needs.authz_timeout}s")
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=needs.authz_failure_mode_allow,
        encode_raw_headers=True,
    )
    if needs.authz_body:
        config.with_request_body = BufferSettings(
            max_request_bytes=64 * 1024, allow_partial_message=True
        )
    return HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=AnyMessage.pack(config))


def filters(needs: EnvoyNeeds, cluster: str = CLUSTER_NAME) -> list[HttpFilter]:
    """The HTTP filters to insert before the router, in order (ext_authz first)."""
    out = []
    if needs.ext_authz:
        out.append(ext_authz_filter(needs, cluster))
    if needs.ext_proc:
        out.append(ext_proc_filter(needs, cluster))
    return out


def _typed_cluster(spec: dict[str, Any]) -> Cluster:
    """envoy_cluster's dict as a typed Cluster. betterproto2 names `enforcing_consecutive_5xx`
    differently from the dict key its from_dict derives, so that block is set by attribute."""
    spec = dict(spec)
    outliers = spec.pop("outlier_detection", None)
    out = Cluster.from_dict(spec)
    if outliers is not None:
        fives = {k: v for k, v in outliers.items() if "5xx" in k}
        detection = OutlierDetection.from_dict(
            {k: v for k, v in outliers.items() if k not in fives}
        )
        for key, value in fives.items():
            setattr(detection, key, value)
        out.outlier_detection = detection
    return out


def _address(endpoint: str) -> Address:
    return Address.from_dict(envoy_cluster.address(endpoint))


def _client_tls(placement: Placement) -> TransportSocket | None:
    tls = placement.tls
    if tls is None:
        return None
    context = UpstreamTlsContext(
        sni=tls.server_name,
        common_tls_context=CommonTlsContext(
            alpn_protocols=["h2"],
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=tls.cert),
                    private_key=DataSource(filename=tls.key),
                )
            ],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=tls.ca),
                match_typed_subject_alt_names=[
                    SubjectAltNameMatcher(
                        san_type=SubjectAltNameMatcherSanType.DNS,
                        matcher=StringMatcher(exact=tls.server_name),
                    )
                ],
            ),
        ),
    )
    return TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=AnyMessage.pack(context)
    )


def cluster(needs: EnvoyNeeds, placement: Placement, name: str = CLUSTER_NAME) -> Cluster:
    """The HTTP/2 cluster that reaches asm-proxy: one endpoint per worker socket (Envoy
    spreads streams over them round-robin), or the Service's name (DNS), with the health
    checks, outlier detection and connection limits of envoy_cluster."""
    service = EXT_PROC_SERVICE if needs.ext_proc else AUTHZ_SERVICE
    spec = envoy_cluster.asm_proxy_cluster(
        placement.endpoints,
        name=name,
        health_check_service=service,
        health_check_interval=envoy_cluster.health_check_interval(needs.settings.drain_delay),
    )
    out = _typed_cluster(spec)
    if not placement.unix:
        out.type = ClusterDiscoveryType.STRICT_DNS
        out.dns_lookup_family = ClusterDnsLookupFamily.V4_PREFERRED
    transport = _client_tls(placement)
    if transport is not None:
        out.transport_socket = transport
    return out


def bootstrap(
    needs: EnvoyNeeds,
    placement: Placement,
    *,
    upstream: str,
    listen: str = "0.0.0.0:10000",
    admin: str = "127.0.0.1:9901",
) -> Bootstrap:
    """A complete Envoy: an HTTP listener on `listen` routing everything to `upstream`
    (HOST:PORT), asm-proxy's filters before the router, and the asm-proxy cluster."""
    router = HttpFilter(name=ROUTER_FILTER, typed_config=AnyMessage.pack(Router()))
    manager = HttpConnectionManager(
        stat_prefix="ingress",
        route_config=RouteConfiguration(
            name="local",
            virtual_hosts=[
                VirtualHost(
                    name="all",
                    domains=["*"],
                    routes=[
                        Route(
                            match=RouteMatch(prefix="/"),
                            route=RouteAction(cluster="upstream"),
                        )
                    ],
                )
            ],
        ),
        http_filters=[*filters(needs), router],
    )
    listener = Listener(
        name="ingress",
        address=_address(listen),
        filter_chains=[
            FilterChain(filters=[Filter(name=HCM_FILTER, typed_config=AnyMessage.pack(manager))])
        ],
    )
    upstream_cluster = Cluster(
        name="upstream",
        type=ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_seconds(1.0),
        load_assignment=ClusterLoadAssignment(
            cluster_name="upstream",
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_address(upstream)))]
                )
            ],
        ),
    )
    return Bootstrap(
        node=Node(id="asm-proxy-envoy", cluster="asm-proxy-envoy"),
        layered_runtime=LayeredRuntime.from_dict(envoy_cluster.layered_runtime()),
        admin=Admin(address=_address(admin)),
        static_resources=BootstrapStaticResources(
            listeners=[listener], clusters=[cluster(needs, placement), upstream_cluster]
        ),
    )
