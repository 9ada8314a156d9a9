"""The Envoy side of asm-proxy, as Envoy's own typed messages (envoy-data-plane).

`filters()` gives the ext_proc filter (and the ext_authz filter with `authzVia: ext_authz`)
configured from `EnvoyNeeds`; `cluster()` the cluster that reaches asm-proxy in its
placement, with gRPC health checks (a draining instance answers NOT_SERVING and Envoy stops
sending to it within one interval) and outlier detection (an endpoint that refuses
connections is ejected); `bootstrap()` a complete Envoy config around them. Messages are
turned into plain dicts (snake_case, `@type` for Any) for YAML.

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
        GrpcServiceEnvoyGrpc,
        HealthCheck,
        HealthCheckGrpcHealthCheck,
        Http2ProtocolOptions,
        Node,
        Pipe,
        SocketAddress,
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
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CertificateValidationContext,
        CommonTlsContext,
        SubjectAltNameMatcher,
        SubjectAltNameMatcherSanType,
        TlsCertificate,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
    from envoy_data_plane.google.protobuf import Any as AnyMessage

from asm_proxy.plugin import BodyAccess
from asm_proxy.render.needs import EnvoyNeeds
from asm_proxy.render.placement import Placement
from asm_proxy.wire import AUTHZ_SERVICE, EXT_PROC_SERVICE

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
CLUSTER_NAME = "asm_proxy"
#: The HTTP/2 protocol options extension a cluster carries.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_BODY_MODES = {
    BodyAccess.NONE: ProcessingModeBodySendMode.NONE,
    BodyAccess.CHUNKS: ProcessingModeBodySendMode.STREAMED,
    BodyAccess.WHOLE: ProcessingModeBodySendMode.BUFFERED,
}


def as_dict(message: betterproto2.Message) -> dict[str, Any]:
    """A message as Envoy's YAML/JSON config reads it (proto field names, `@type` on Any)."""
    return message.to_dict(casing=betterproto2.Casing.SNAKE)


def _seconds(value: float) -> timedelta:
    return timedelta(milliseconds=round(value * 1000))


def _send(flag: bool) -> ProcessingModeHeaderSendMode:
    return ProcessingModeHeaderSendMode.SEND if flag else ProcessingModeHeaderSendMode.SKIP


def ext_proc_filter(needs: EnvoyNeeds, cluster: str = CLUSTER_NAME) -> HttpFilter:
    config = ExternalProcessor(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=cluster)),
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
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=cluster),
            timeout=_seconds(needs.authz_timeout),
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


def health_check(needs: EnvoyNeeds) -> HealthCheck:
    """gRPC health checks that notice a draining instance within its drainDelay: asm-proxy
    says NOT_SERVING at once and keeps serving for drainDelay, so checking about three
    times per drainDelay (never more often than every 200 ms) moves Envoy away in time;
    `no_traffic_interval` keeps checking an idle cluster as often."""
    interval = max(0.2, needs.settings.drain_delay / 3)
    service = EXT_PROC_SERVICE if needs.ext_proc else AUTHZ_SERVICE
    return HealthCheck(
        timeout=_seconds(min(1.0, interval * 2)),
        interval=_seconds(interval),
        no_traffic_interval=_seconds(interval),
        unhealthy_threshold=1,
        healthy_threshold=1,
        grpc_health_check=HealthCheckGrpcHealthCheck(service_name=service),
    )


def outlier_detection() -> OutlierDetection:
    """Eject an endpoint that refuses connections or resets streams (a worker that died, a
    replica killed) after two in a row, for a few seconds; never eject the last half."""
    return OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        consecutive_gateway_failure=2,
        interval=_seconds(1.0),
        base_ejection_time=_seconds(5.0),
        max_ejection_percent=50,
    )


def _address(endpoint: str) -> Address:
    if endpoint.startswith("unix:"):
        return Address(pipe=Pipe(path=endpoint[len("unix:") :]))
    host, _, port = endpoint.rpartition(":")
    return Address(socket_address=SocketAddress(address=host.strip("[]"), port_value=int(port)))


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
    spreads streams over them round-robin), or the Service's name (DNS)."""
    protocol = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    out = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if placement.unix else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_seconds(1.0),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: AnyMessage.pack(protocol)},
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(endpoint=Endpoint(address=_address(e)))
                        for e in placement.endpoints
                    ]
                )
            ],
        ),
        health_checks=[health_check(needs)],
        outlier_detection=outlier_detection(),
    )
    if not placement.unix:
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
        admin=Admin(address=_address(admin)),
        static_resources=BootstrapStaticResources(
            listeners=[listener], clusters=[cluster(needs, placement), upstream_cluster]
        ),
    )
