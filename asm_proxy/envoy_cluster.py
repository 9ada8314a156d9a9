"""The Envoy side of reaching asm-proxy: its cluster, the filters' `grpc_service`, a runtime
flag. One place, used by the demo's and the tests' bootstraps and by `asm-proxy render`, so
every Envoy config the project writes gets what asm-proxy's reliability depends on:

- **gRPC health checks** every 0.5 s, also when no traffic flows (`no_traffic_interval`): a
  draining asm-proxy answers NOT_SERVING at once and keeps accepting streams for its
  `drainDelay` (1 s), so Envoy stops sending to it before it refuses anything.
- **Outlier detection on local-origin errors**: an endpoint that refuses a connection (a dead
  worker's Unix socket until its replacement binds it) is ejected at the first refusal, and
  let back when a health check passes.
- **A retry policy on the filters' `grpc_service`**: a stream that never reached asm-proxy's
  code is tried again on another endpoint: connection refused, refused by a GOAWAY, or
  cancelled by a worker that is stopping before its handler took it (grpc cancels the calls
  it has received but not yet handed over when a server stops: what a recycled worker
  would otherwise cost at the moment it stops). Not a stream reset after asm-proxy took it:
  a request that crashes its worker would crash the next one too, so a crash costs the
  streams in flight on that worker and no more.
- **`max_requests_per_connection`** (TCP): the kernel spreads connections, not streams, over
  the workers sharing the port; Envoy keeps one connection while it suffices, so without
  this every stream of a moderately loaded Envoy lands on one worker. Connections that end
  after N streams are spread again.
- **Runtime `ext_proc_graceful_grpc_close`**: at the end of an exchange Envoy half-closes the
  ext_proc stream and waits for asm-proxy's status, instead of resetting the stream. Every
  reset call costs grpc.aio a leaked batch (grpc/grpc#43360, up to ~120 bytes a request; see
  docs/RELIABILITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ASM_PROXY_CLUSTER = "asm_proxy"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"

#: Health check period. asm-proxy's drainDelay (default 1 s) must exceed it (plus a check's
#: round trip) for a drain to cost nothing.
HEALTH_CHECK_INTERVAL = "0.5s"
#: Streams on one TCP connection before Envoy opens another (which the kernel gives to any
#: worker): two new connections a second at 200 requests/s; see docs/RELIABILITY.md.
MAX_REQUESTS_PER_CONNECTION = 100
#: The runtime flags asm-proxy wants (a bootstrap's `layered_runtime`; Istio: the proxy's
#: runtime values).
RUNTIME_FLAGS: dict[str, Any] = {"envoy.reloadable_features.ext_proc_graceful_grpc_close": True}


def health_check_interval(drain_delay: float) -> str:
    """The check period for an asm-proxy whose drainDelay is `drain_delay` seconds: at most
    half of it (a draining instance is noticed before it stops accepting streams), at most
    HEALTH_CHECK_INTERVAL, never under 0.2 s."""
    return f"{max(0.2, min(0.5, drain_delay / 2)):g}s"


_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


def address(target: str) -> dict[str, Any]:
    """An Envoy address from `HOST:PORT` or `unix:/path`."""
    if target.startswith("unix:"):
        return {"pipe": {"path": target[len("unix:") :]}}
    host, _, port = target.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def asm_proxy_cluster(
    targets: Sequence[str],
    *,
    name: str = ASM_PROXY_CLUSTER,
    max_streams: int | None = None,
    max_requests_per_connection: int | None = MAX_REQUESTS_PER_CONNECTION,
    health_checks: bool = True,
    health_check_service: str = EXT_PROC_SERVICE,
    health_check_interval: str = HEALTH_CHECK_INTERVAL,
    health_check_path: str | None = None,
    outlier_detection: bool = True,
) -> dict[str, Any]:
    """The static HTTP/2 cluster of asm-proxy endpoints: every worker's Unix socket
    (`PATH.0`, `PATH.1`, ...) or the shared TCP address, one entry per instance. Health
    checks are gRPC's, or with `health_check_path` HTTP GETs of that path (the HTTP/1.1
    cluster of ext_authz's http_service: /healthz answers 503 once draining)."""
    common: dict[str, Any] = {}
    if max_requests_per_connection:
        common["max_requests_per_connection"] = max_requests_per_connection
    http2 = {} if max_streams is None else {"max_concurrent_streams": max_streams}
    endpoints = [{"lb_endpoints": [{"endpoint": {"address": address(t)}} for t in targets]}]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_PROTOCOL_OPTIONS}",
                "common_http_protocol_options": common,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": endpoints,
        },
        # Retries are rare and cheap (a refused connect); the default cap of 3 at once
        # would turn a burst of them into failures.
        "circuit_breakers": {"thresholds": [{"max_retries": 64}]},
    }
    if outlier_detection:
        cluster["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            # Only refusals eject: an error status from asm-proxy (a plugin's fault) would
            # be the same on every worker.
            "enforcing_consecutive_5xx": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "1s",
            "base_ejection_time": "1s",
            "max_ejection_time": "5s",
            "max_ejection_percent": 100,
        }
    if health_checks:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": health_check_interval,
                "no_traffic_interval": health_check_interval,
                "unhealthy_threshold": 2,  # NOT_SERVING counts at once; a lost check does not
                "healthy_threshold": 1,
                **(
                    {"http_health_check": {"path": health_check_path}}
                    if health_check_path
                    else {"grpc_health_check": {"service_name": health_check_service}}
                ),
            }
        ]
    return cluster


def grpc_service(
    cluster: str = ASM_PROXY_CLUSTER, *, timeout: str | None = None, retries: bool = True
) -> dict[str, Any]:
    """The `grpc_service` of an ext_proc or ext_authz filter that calls asm-proxy."""
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": cluster}}
    if timeout is not None:
        service["timeout"] = timeout
    if retries:
        service["retry_policy"] = {
            "retry_on": "connect-failure,refused-stream,cancelled",
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": _PREVIOUS_HOSTS},
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    return service


def layered_runtime() -> dict[str, Any]:
    """A bootstrap's `layered_runtime` carrying RUNTIME_FLAGS."""
    return {"layers": [{"name": "asm-proxy", "static_layer": dict(RUNTIME_FLAGS)}]}
