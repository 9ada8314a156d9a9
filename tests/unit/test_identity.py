"""Workload identity: from what Envoy proves, never from request headers."""

from __future__ import annotations

from asm_proxy.identity import UNKNOWN, from_attributes, from_spiffe


def test_from_istio_node_metadata_attributes() -> None:
    """xds.node.metadata.* attributes give namespace, labels, name and service account."""
    workload = from_attributes(
        {
            "xds.node.metadata.NAMESPACE": "shop",
            "xds.node.metadata.WORKLOAD_NAME": "cart-v2",
            "xds.node.metadata.SERVICE_ACCOUNT": "cart",
            "xds.node.metadata.LABELS['app']": "cart",
            "xds.node.metadata.LABELS.version": "v2",
        }
    )
    assert workload.namespace == "shop"
    assert dict(workload.labels) == {"app": "cart", "version": "v2"}
    assert (workload.name, workload.service_account) == ("cart-v2", "cart")


def test_namespace_from_istio_node_id() -> None:
    """Istio's node id carries the namespace when NAMESPACE is not asked for."""
    workload = from_attributes(
        {"xds.node.id": "sidecar~10.0.0.7~cart-1.shop~shop.svc.cluster.local"}
    )
    assert workload.namespace == "shop"


def test_spiffe_peer_wins() -> None:
    """An mTLS-proven SPIFFE ID overrides what attributes say."""
    peer = from_spiffe("spiffe://cluster.local/ns/shop/sa/cart")
    assert peer is not None
    workload = from_attributes({"xds.node.metadata.NAMESPACE": "other"}, peer)
    assert workload.namespace == "shop"
    assert workload.principal == "spiffe://cluster.local/ns/shop/sa/cart"


def test_nothing_known() -> None:
    """Without any source the workload is UNKNOWN."""
    assert from_attributes({"request.path": "/"}) is UNKNOWN
    assert not UNKNOWN.known
    assert from_spiffe("https://example.com") is None
