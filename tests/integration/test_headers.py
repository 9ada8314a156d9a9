"""Header set / append / add-if-absent / remove through real Envoy, both directions."""

from __future__ import annotations

from tests.integration.conftest import StackFactory

CONFIG = """
plugins:
  - name: tenant
    type: headers
    phase: AUTHN
    match: [{paths: [{prefix: /api}]}]
    config:
      request:
        remove: [x-debug]
        set: {x-tenant: blue}
        append: {x-multi: [one, two]}
        addIfAbsent: {x-default: fallback}
      response:
        set: {x-served-by: asm-proxy}
        remove: [x-upstream]
        append: {cache-control: no-store}
"""


def test_request_and_response_headers(stack: StackFactory) -> None:
    """The upstream sees the request as the plugin left it; the client sees the response so."""
    s = stack(CONFIG)
    resp = s.get("/api/x", headers={"x-debug": "1", "x-multi": "zero", "x-default": "mine"})
    assert resp.status_code == 200
    seen = s.seen("a")
    assert seen.header("x-debug") is None
    assert seen.header("x-tenant") == "blue"
    assert seen.header_values("x-multi") == ["zero", "one", "two"]
    assert seen.header("x-default") == "mine"  # present already: left alone
    assert resp.headers["x-served-by"] == "asm-proxy"
    assert "x-upstream" not in resp.headers
    assert resp.headers.get_list("cache-control") == ["no-store"]


def test_add_if_absent_adds(stack: StackFactory) -> None:
    """add-if-absent fills a header the client did not send."""
    s = stack(CONFIG)
    s.get("/api/x")
    assert s.seen("a").header("x-default") == "fallback"


def test_unmatched_request_is_untouched(stack: StackFactory) -> None:
    """Outside the match the request passes unchanged and Envoy skips the response phase."""
    s = stack(CONFIG)
    resp = s.get("/other", headers={"x-debug": "1"})
    assert s.seen("a").header("x-debug") == "1"
    assert resp.headers["x-upstream"] == "a"
    stats = s.envoy.ext_proc_stats()
    assert stats["stream_msgs_sent"] == 1  # request headers only: the response was skipped


def test_non_ascii_header_values_survive(stack: StackFactory) -> None:
    """Header values that are not ASCII pass through asm-proxy byte for byte."""
    s = stack(CONFIG)
    s.get("/api/x", headers=[("x-name", "Zoë".encode())])
    assert s.seen("a").header("x-name") == "Zoë"
