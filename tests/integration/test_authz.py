"""ext_authz through real Envoy: the AUTHN/AUTHZ plugins allow or deny."""

from __future__ import annotations

import json

from asm_proxy.envoy_bootstrap import ExtAuthz
from asm_proxy.stats import counters
from asm_proxy.transport.nghttp2.http1 import METADATA_HEADER
from tests.integration.conftest import StackFactory

CONFIG = """
plugins:
  - {name: gate, type: 'tests.support.plugins:Gate', phase: AUTHN}
  - {name: tag, type: headers, phase: STATS, config: {request: {set: {x-tag: '1'}}}}
"""


def test_allow_with_headers_and_metadata(stack: StackFactory, over: ExtAuthz) -> None:
    """Allowed: the upstream sees the plugin's header changes; metadata lands under the
    ext_authz filter's namespace (over HTTP as the JSON of a header Envoy keeps); STATS
    plugins do not run in Check."""
    s = stack(CONFIG, ext_authz=over, use_ext_proc=False)
    resp = s.get("/", headers={"x-allow": "yes"})
    assert resp.status_code == 200
    seen = s.seen("a")
    assert seen.header("x-user") == "alice"
    assert seen.header("x-allow") is None
    assert seen.header("x-tag") is None
    (entry,) = s.log_entries(1)
    if over.http_prefix is None:
        assert entry["authz_metadata"]["user"] == "alice"
    else:
        assert json.loads(entry["authz_metadata"][METADATA_HEADER + "user"]) == "alice"
        # Envoy health-checks the HTTP cluster on /healthz, as it does the gRPC one.
        stats = s.envoy.stats("cluster.asm_proxy_http.health_check.")
        assert stats.get("cluster.asm_proxy_http.health_check.success", 0) >= 1
        assert stats.get("cluster.asm_proxy_http.health_check.failure", 0) == 0


def test_deny(stack: StackFactory, over: ExtAuthz) -> None:
    """Denied: the client gets the plugin's status, headers and body; no upstream call."""
    s = stack(CONFIG, ext_authz=over, use_ext_proc=False)
    before = len(s.upstreams["a"].requests)
    missing = s.get("/")
    assert (missing.status_code, missing.text) == (401, "who are you?\n")
    assert missing.headers["www-authenticate"] == 'Bearer realm="test"'
    wrong = s.get("/", headers={"x-allow": "no"})
    assert (wrong.status_code, wrong.text) == (403, "not you\n")
    assert len(s.upstreams["a"].requests) == before
    log = s.log_entries(2)
    assert [e["code"] for e in log] == [401, 403]


def test_context_extensions_name_the_workload(stack: StackFactory) -> None:
    """Envoy's per-route context_extensions (trusted config) select workload-scoped plugins."""
    config = """
plugins:
  - {name: shop-only, type: headers, phase: AUTHZ, selector: {namespace: shop, matchLabels: {app: cart}},
     config: {request: {set: {x-shop: '1'}}}}
  - {name: other-only, type: headers, phase: AUTHZ, selector: {namespace: other},
     config: {request: {set: {x-other: '1'}}}}
"""
    s = stack(
        config,
        ext_authz=ExtAuthz(
            context_extensions={"workload.namespace": "shop", "workload.labels.app": "cart"}
        ),
        use_ext_proc=False,
    )
    s.get("/")
    assert s.seen("a").header("x-shop") == "1"
    assert s.seen("a").header("x-other") is None


def test_a_pseudo_header_rewrite_is_refused_over_http_and_counted_so(
    stack: StackFactory, over: ExtAuthz
) -> None:
    """Over gRPC a check may rewrite :authority (Envoy applies it); over HTTP the answer
    cannot carry it, so the check is refused (403) and counted as denied, not allowed."""
    config = """
plugins:
  - {name: reroute, type: 'tests.support.plugins:Reroute', phase: AUTHZ,
     config: {authority: elsewhere.example}}
"""
    s = stack(config, ext_authz=over, use_ext_proc=False)
    assert s.get("/").status_code == 200  # nothing to rewrite
    before = len(s.upstreams["a"].requests)
    denied = counters.authz_denied  # the server runs in this process
    reply = s.get("/", headers={"x-reroute": "1"})
    if over.http_prefix is None:
        assert reply.status_code == 200
        assert s.seen("a").header("host") == "elsewhere.example"
        assert counters.authz_denied == denied
    else:
        assert reply.status_code == 403
        assert "path rewrite" in reply.text
        assert len(s.upstreams["a"].requests) == before
        assert counters.authz_denied == denied + 1
