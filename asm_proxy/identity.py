"""Which workload an exchange belongs to, from what Envoy proves rather than what a client says.

Sources, strongest first:
- a peer identity the server established itself: an mTLS SPIFFE ID
  `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` (`from_spiffe`, for when
  the server terminates mTLS in central mode — planned), or ext_authz context extensions
  set in Envoy's route config;
- Envoy attributes computed from its own node metadata (Istio sets NAMESPACE, LABELS,
  WORKLOAD_NAME, SERVICE_ACCOUNT on every sidecar), asked for in the ext_proc filter's
  `request_attributes`, e.g. `xds.node.metadata.NAMESPACE`, `xds.node.metadata.LABELS['app']`;
- Istio's node id (`sidecar~10.0.0.1~pod.namespace~namespace.svc.cluster.local`).

Request headers are never a source: any client can set them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NODE_METADATA = "xds.node.metadata."
_LABELS = NODE_METADATA + "LABELS"
_LABEL_KEY = re.compile(r"""^\.([A-Za-z0-9_.\-/]+)$|^\[['"]([^'"]+)['"]\]$""")
_SPIFFE = re.compile(r"^spiffe://[^/]+/ns/([^/]+)/sa/([^/]+)$")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Workload:
    """The calling workload; every field is None/empty when Envoy did not tell."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    name: str | None = None
    service_account: str | None = None
    principal: str | None = None  # SPIFFE ID proven by mTLS

    @property
    def known(self) -> bool:
        return self.namespace is not None or bool(self.labels) or self.principal is not None


UNKNOWN = Workload()


def from_spiffe(uri: str) -> Workload | None:
    m = _SPIFFE.match(uri)
    if m is None:
        return None
    return Workload(namespace=m.group(1), service_account=m.group(2), principal=uri)


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    return None


def from_attributes(attributes: Mapping[str, Any], peer: Workload | None = None) -> Workload:
    """Build the workload from Envoy attributes; what `peer` knows (mTLS, or ext_authz
    context extensions from Envoy's config) wins where it speaks."""
    namespace = _str(attributes.get(NODE_METADATA + "NAMESPACE"))
    name = _str(attributes.get(NODE_METADATA + "WORKLOAD_NAME"))
    service_account = _str(attributes.get(NODE_METADATA + "SERVICE_ACCOUNT"))
    labels: dict[str, str] = {}
    for key, value in attributes.items():
        if key.startswith(_LABELS):
            m = _LABEL_KEY.match(key[len(_LABELS) :])
            if m is not None and isinstance(value, str):
                labels[m.group(1) or m.group(2)] = value
    if namespace is None:
        node_id = _str(attributes.get("xds.node.id"))
        if node_id is not None:
            namespace = _namespace_from_istio_node_id(node_id)
    principal = None
    if peer is not None:
        namespace = peer.namespace or namespace
        name = peer.name or name
        service_account = peer.service_account or service_account
        labels.update(peer.labels)
        principal = peer.principal
    if not (namespace or labels or name or service_account or principal):
        return UNKNOWN
    return Workload(
        namespace=namespace,
        labels=MappingProxyType(labels) if labels else _EMPTY,
        name=name,
        service_account=service_account,
        principal=principal,
    )


def identity_conflict(attributes: Mapping[str, Any], peer: Workload | None) -> str | None:
    """A proven peer (mTLS) and Envoy's node metadata must name the same namespace: a
    sidecar configured as another namespace's is refused, not believed."""
    if peer is None or peer.principal is None or peer.namespace is None:
        return None
    claimed = _str(attributes.get(NODE_METADATA + "NAMESPACE"))
    if claimed is not None and claimed != peer.namespace:
        return (
            f"node metadata says namespace {claimed!r}, "
            f"the certificate ({peer.principal}) says {peer.namespace!r}"
        )
    return None


def _namespace_from_istio_node_id(node_id: str) -> str | None:
    # sidecar~10.0.0.1~pod-name.namespace~namespace.svc.cluster.local
    parts = node_id.split("~")
    if len(parts) == 4 and parts[3]:
        return parts[3].split(".", 1)[0] or None
    return None
