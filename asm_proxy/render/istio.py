"""The Istio side: EnvoyFilter, and for central mode a DestinationRule, the ext_authz
extension provider and an AuthorizationPolicy.

The EnvoyFilter inserts the filters before the router in the chosen listener context and,
for a Unix socket (sidecar, node), adds the cluster that reaches it. In central mode the
filters use the outbound cluster Istio already makes for asm-proxy's Service (mTLS with
ISTIO_MUTUAL, from a DestinationRule that also ejects failing replicas); the ext_authz
filter there is Istio's own, configured through `meshConfig.extensionProviders` and an
AuthorizationPolicy with `action: CUSTOM`.
"""

from __future__ import annotations

from typing import Any, Literal

from asm_proxy import envoy_cluster
from asm_proxy.loader import Loaded
from asm_proxy.render import envoy
from asm_proxy.render.needs import EnvoyNeeds
from asm_proxy.render.placement import MODE_LABEL, Placement

Context = Literal["SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]
CONTEXTS: tuple[Context, ...] = ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY")
NAME = "asm-proxy"
#: The root namespace: objects there apply to every namespace (as Istio treats it).
ROOT_NAMESPACE = "istio-system"


def workload_selector(loaded: Loaded) -> dict[str, str] | None:
    """The labels every plugin's selector requires, when all plugins select the same
    labels; otherwise None (the filter goes to every workload and asm-proxy's own
    selection decides per exchange, from the identity Envoy sends)."""
    selectors = [e.selector.match_labels if e.selector else {} for e in loaded.chain.entries]
    if not selectors or any(not labels for labels in selectors):
        return None
    first = selectors[0]
    return dict(first) if all(labels == first for labels in selectors) else None


def selector_namespace(loaded: Loaded) -> str | None:
    """The one namespace every plugin's selector names, if there is one."""
    namespaces = {
        frozenset(e.selector.namespaces if e.selector else ()) for e in loaded.chain.entries
    }
    if len(namespaces) == 1:
        (only,) = namespaces
        if len(only) == 1:
            return next(iter(only))
    return None


def _cluster_name(placement: Placement) -> str:
    if placement.mode == "central":
        return f"outbound|{placement.port}||{placement.host}"
    return envoy.CLUSTER_NAME


def envoy_filter(
    needs: EnvoyNeeds, placement: Placement, loaded: Loaded, context: Context, namespace: str
) -> dict[str, Any]:
    cluster_name = _cluster_name(placement)
    http_filters = envoy.filters(needs, cluster_name)
    if placement.mode == "central" and needs.ext_authz:
        # Istio's own ext_authz filter comes from the extension provider.
        http_filters = [f for f in http_filters if f.name != envoy.EXT_AUTHZ_FILTER]
    patches: list[dict[str, Any]] = [
        {
            "applyTo": "HTTP_FILTER",
            "match": {
                "context": context,
                "listener": {
                    "filterChain": {
                        "filter": {
                            "name": envoy.HCM_FILTER,
                            "subFilter": {"name": envoy.ROUTER_FILTER},
                        }
                    }
                },
            },
            "patch": {"operation": "INSERT_BEFORE", "value": envoy.as_dict(f)},
        }
        for f in http_filters
    ]
    if placement.mode != "central":
        patches.append(
            {
                "applyTo": "CLUSTER",
                "match": {"context": context},
                "patch": {
                    "operation": "ADD",
                    "value": envoy.as_dict(envoy.cluster(needs, placement, cluster_name)),
                },
            }
        )
    spec: dict[str, Any] = {"configPatches": patches}
    labels = workload_selector(loaded) or {}
    if placement.mode != "central":
        labels = {**labels, MODE_LABEL: placement.mode}
    if labels:
        spec["workloadSelector"] = {"labels": labels}
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": spec,
    }


def destination_rule(placement: Placement) -> dict[str, Any]:
    """Central mode: mTLS to the replicas, HTTP/2, and envoy_cluster's ejection and
    connection spreading in Istio's words (a replica that refuses connections is ejected
    at once; an error status, a plugin's, would be the same on every replica)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": NAME, "namespace": placement.namespace},
        "spec": {
            "host": placement.host,
            "trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "connectionPool": {
                    "http": {
                        "h2UpgradePolicy": "UPGRADE",
                        "maxRequestsPerConnection": envoy_cluster.MAX_REQUESTS_PER_CONNECTION,
                    }
                },
                "outlierDetection": {
                    "splitExternalLocalOriginErrors": True,
                    "consecutiveLocalOriginFailures": 1,
                    "consecutive5xxErrors": 0,
                    "interval": "1s",
                    "baseEjectionTime": "1s",
                    "maxEjectionPercent": 100,
                },
            },
        },
    }


def mesh_config(needs: EnvoyNeeds, placement: Placement) -> dict[str, Any]:
    """The meshConfig to merge into istiod's: envoy_cluster's runtime flags for every proxy
    (`defaultConfig.runtimeValues`; a pod can carry them in its `proxy.istio.io/config`
    annotation instead), and in central mode with ext_authz the extension provider that
    makes asm-proxy Istio's ext_authz service."""
    runtime = {key: str(value).lower() for key, value in envoy_cluster.RUNTIME_FLAGS.items()}
    mesh: dict[str, Any] = {"defaultConfig": {"runtimeValues": runtime}}
    if placement.mode == "central" and needs.ext_authz:
        mesh["extensionProviders"] = [
            {"name": NAME, "envoyExtAuthzGrpc": _provider(needs, placement)}
        ]
    return {"meshConfig": mesh}


def _provider(needs: EnvoyNeeds, placement: Placement) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "service": placement.host,
        "port": placement.port,
        "timeout": f"{round(needs.authz_timeout * 1000)}ms",
        "failOpen": needs.authz_failure_mode_allow,
    }
    if needs.authz_body:
        provider["includeRequestBodyInCheck"] = {
            "maxRequestBytes": 64 * 1024,
            "allowPartialMessage": True,
        }
    return provider


def authorization_policy(loaded: Loaded, namespace: str) -> dict[str, Any]:
    """Every request to the selected workloads goes through asm-proxy's Check."""
    spec: dict[str, Any] = {"action": "CUSTOM", "provider": {"name": NAME}, "rules": [{}]}
    labels = workload_selector(loaded)
    if labels:
        spec["selector"] = {"matchLabels": labels}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": spec,
    }


def objects(
    needs: EnvoyNeeds,
    placement: Placement,
    loaded: Loaded,
    *,
    context: Context,
    namespace: str | None,
) -> dict[str, dict[str, Any]]:
    """The Istio side by file name: envoyfilter.yaml and mesh-config.yaml, and in central
    mode destinationrule.yaml (+ authorizationpolicy.yaml with ext_authz)."""
    ns = namespace or selector_namespace(loaded) or ROOT_NAMESPACE
    out = {
        "envoyfilter.yaml": envoy_filter(needs, placement, loaded, context, ns),
        "mesh-config.yaml": mesh_config(needs, placement),
    }
    if placement.mode == "central":
        out["destinationrule.yaml"] = destination_rule(placement)
        if needs.ext_authz:
            out["authorizationpolicy.yaml"] = authorization_policy(loaded, ns)
    return out
