"""Immediate responses and dynamic metadata in Envoy's access log."""

from __future__ import annotations

from tests.integration.conftest import StackFactory

CONFIG = """
plugins:
  - name: gate
    type: 'tests.support.plugins:Gate'
    phase: AUTHN
    match: [{paths: [{prefix: /private}]}]
  - name: gone
    type: direct_response
    match: [{paths: [{prefix: /v1/}]}]
    config: {status: 410, body: "v1 is gone\\n", headers: {content-type: text/plain, x-why: retired}}
  - name: meta
    type: 'tests.support.plugins:SetMetadata'
    phase: STATS
    config: {values: {tier: gold}, fromHeader: x-tenant}
"""


def test_immediate_response(stack: StackFactory) -> None:
    """A Respond reaches the client with its status, headers and body; the upstream never
    sees the request; the details reach %RESPONSE_CODE_DETAILS%."""
    s = stack(CONFIG)
    before = len(s.upstreams["a"].requests)
    resp = s.get("/v1/users")
    assert (resp.status_code, resp.text) == (410, "v1 is gone\n")
    assert resp.headers["x-why"] == "retired"
    assert resp.headers.get_list("content-type") == ["text/plain"]
    denied = s.get("/private/x")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="test"'
    assert len(s.upstreams["a"].requests) == before
    log = s.log_entries(2)
    assert [(e["code"], e["details"]) for e in log] == [
        (410, "asm_proxy_direct_response"),
        (401, "gate_missing_credentials"),
    ]


def test_metadata_in_access_log(stack: StackFactory) -> None:
    """Metadata set by plugins is printed by %DYNAMIC_METADATA(asm-proxy:key)%."""
    s = stack(CONFIG)
    s.get("/private/x", headers={"x-allow": "yes", "x-tenant": "blue"})
    (entry,) = s.log_entries(1)
    assert entry["md_user"] == "alice"
    assert entry["md_from_header"] == "blue"
    assert entry["metadata"] == {"user": "alice", "tier": "gold", "from_header": "blue"}
    assert s.seen("a").header("x-user") == "alice"
    assert s.seen("a").header("x-allow") is None
