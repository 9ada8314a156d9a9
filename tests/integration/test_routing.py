"""Changing :authority re-routes the request: two virtual hosts, two clusters."""

from __future__ import annotations

from asm_proxy.envoy_bootstrap import Route
from tests.integration.conftest import StackFactory

CONFIG = """
plugins:
  - {name: reroute, type: 'tests.support.plugins:Reroute', config: {authority: 'b.service.local:8080'}}
"""
ROUTES = [Route("b", domains=["b.service.local", "b.service.local:*"]), Route("a", domains=["*"])]


def test_authority_rewrite_reaches_the_other_cluster(stack: StackFactory) -> None:
    """The route is chosen again after asm-proxy changes :authority (clear_route_cache)."""
    s = stack(CONFIG, routes=ROUTES)
    plain = s.get("/x")
    assert plain.headers["x-upstream"] == "a"
    moved = s.get("/x", headers={"x-reroute": "1"})
    assert moved.headers["x-upstream"] == "b"
    assert s.seen("b").header("host") == "b.service.local:8080"
    log = s.log_entries(2)
    assert [e["upstream_cluster"] for e in log] == ["a", "b"]
