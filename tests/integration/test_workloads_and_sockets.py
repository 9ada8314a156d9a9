"""Workload selectors from Envoy's node metadata, and serving on a Unix socket."""

from __future__ import annotations

from pathlib import Path

from asm_proxy.envoy_bootstrap import ExtProc
from tests.integration.conftest import StackFactory

SELECTORS = """
plugins:
  - {name: tag, type: 'tests.support.plugins:WorkloadTag'}
  - {name: cart-only, type: headers, selector: {namespace: shop, matchLabels: {app: cart}},
     config: {request: {set: {x-cart: '1'}}}}
  - {name: web-only, type: headers, selector: {matchLabels: {app: web}},
     config: {request: {set: {x-web: '1'}}}}
"""
ATTRIBUTES = ["xds.node.metadata.NAMESPACE", "xds.node.metadata.LABELS['app']"]


def test_selector_uses_envoy_node_metadata(stack: StackFactory) -> None:
    """Envoy sends its node metadata as attributes; plugins apply to the selected workloads."""
    s = stack(
        SELECTORS,
        ext_proc=ExtProc(request_attributes=ATTRIBUTES),
        node_metadata={"NAMESPACE": "shop", "LABELS": {"app": "cart"}},
    )
    s.get("/", headers={"x-workload-namespace": "forged"})
    seen = s.seen("a")
    assert seen.header("x-workload-namespace") == "shop"  # the client's header is not believed
    assert seen.header("x-workload-app") == "cart"
    assert seen.header("x-cart") == "1"
    assert seen.header("x-web") is None


def test_unknown_workload_gets_no_scoped_plugins(stack: StackFactory) -> None:
    """Without identity attributes, workload-scoped plugins do not apply."""
    s = stack(SELECTORS)
    s.get("/")
    assert s.seen("a").header("x-cart") is None
    assert s.seen("a").header("x-workload-namespace") == "unknown"


def test_unix_socket(stack: StackFactory, tmp_path: Path) -> None:
    """asm-proxy on a Unix socket, Envoy reaching it through a pipe address (sidecar mode)."""
    sock = f"unix:{tmp_path}/run/ext_proc.sock"
    s = stack(
        "plugins: [{name: t, type: headers, config: {request: {set: {x-sock: '1'}}}}]", listen=sock
    )
    assert s.server.address == sock
    s.get("/")
    assert s.seen("a").header("x-sock") == "1"
