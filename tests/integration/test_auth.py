"""The auth plugin through a real Envoy, on both paths: the ext_authz filter asking
Check, and the ext_proc chain answering with an immediate response.

A real JWKS endpoint on 127.0.0.1 serves the keys; the echo upstream records what it got.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from asm_proxy.envoy_bootstrap import ExtAuthz, ExtProc
from asm_proxy.transport.nghttp2.http1 import METADATA_HEADER
from tests.integration.conftest import Stack, StackFactory
from tests.support.jwks import AUDIENCE, ISSUER, JwksServer, claims, jwks, rsa_key
from tests.support.waiting import wait_for

API_KEY = "k-9d2c4e6a8b0f1357"


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    server = JwksServer(jwks(rsa_key("k1")))
    yield server
    server.stop()


def config(idp: JwksServer, tmp_path: Path, *, dry_run: bool = False, refresh: str = "10m") -> str:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("carol:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return f"""
plugins:
  - name: auth
    type: auth
    phase: AUTHN
    config:
      realm: shop
      secretsReloadInterval: 50ms
      dryRun: {str(dry_run).lower()}
      jwt:
        providers:
          - name: idp
            issuer: {ISSUER}
            audiences: [{AUDIENCE}]
            jwksUri: {idp.url}
            minRefetchInterval: 100ms
            refreshInterval: {refresh}
            claimsToHeaders: {{x-user: sub, x-groups: groups}}
            claimsToMetadata: [sub]
      apiKeys:
        sources: [{{header: x-api-key}}, {{query: api_key}}]
        keys: [{{consumer: batch-job, sha256: {digest}}}]
      basic:
        htpasswdFile: {htpasswd}
        minCost: 4
      rules:
        - match: [{{paths: [{{prefix: /public}}]}}]
          anonymous: true
        - match: [{{paths: [{{prefix: /admin}}]}}]
          credentials: [jwt]
          require: {{claims: {{groups: admin}}}}
"""


@dataclass
class Path_:
    """One way Envoy reaches asm-proxy, and where each thing shows up in its log."""

    name: str
    stack: Stack

    @property
    def authz(self) -> bool:
        return self.name.startswith("ext_authz")

    def metadata(self, entry: dict[str, Any], key: str) -> Any:
        """What asm-proxy's answer put under `key` of the dynamic metadata. ext_proc: the
        server's namespace; ext_authz: the ext_authz filter's, over HTTP as the JSON of
        the x-asm-proxy-md-KEY header Envoy's dynamic_metadata_from_headers keeps."""
        if self.name == "ext_authz_http":
            value = (entry["authz_metadata"] or {}).get(METADATA_HEADER + key)
            return json.loads(value) if value is not None else None
        ns = entry["authz_metadata"] if self.authz else entry["metadata"]
        return (ns or {}).get(key)

    def auth_metadata(self, entry: dict[str, Any]) -> Any:
        return self.metadata(entry, "auth")


#: The ext_authz checks over plain HTTP (Envoy's http_service), same plugins, same answers.
HTTP = ExtAuthz(http_prefix="/ext_authz")


@pytest.fixture(params=["ext_proc", "ext_authz", "ext_authz_http"])
def through(
    request: pytest.FixtureRequest,
    stack: StackFactory,
    idp: JwksServer,
    tmp_path: Path,
    transport: str,
) -> Path_:
    if request.param == "ext_authz_http" and transport != "nghttp2":
        pytest.skip("ext_authz over HTTP is served by the nghttp2 transport")
    kw: dict[str, Any] = {}
    if request.param == "ext_authz":
        kw = {"ext_authz": ExtAuthz(), "use_ext_proc": False}
    elif request.param == "ext_authz_http":
        kw = {"ext_authz": HTTP, "use_ext_proc": False}
    return Path_(request.param, stack(config(idp, tmp_path), **kw))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_valid_jwt_reaches_the_upstream_with_its_claims(through: Path_) -> None:
    """Allowed: the upstream sees the claims as headers, not the token and not the
    identity header the client tried to set; the access log has the identity."""
    s = through.stack
    resp = s.get("/orders", headers={**bearer(rsa_key("k1").sign(claims())), "x-user": "mallory"})
    assert resp.status_code == 200
    seen = s.seen("a")
    assert seen.header_values("x-user") == ["alice"]
    assert seen.header("x-groups") == "staff,admin"
    assert seen.header("authorization") is None
    (entry,) = s.log_entries(1)
    assert entry["code"] == 200
    assert through.auth_metadata(entry) == {
        "decision": "allow",
        "reason": "allowed",
        "kind": "jwt",
        "consumer": "alice",
        "provider": "idp",
        "claims": {"sub": "alice"},
    }


def test_missing_and_invalid_jwt_get_401(through: Path_) -> None:
    """No credential and an expired token: 401 with the challenges, a short body, no
    upstream call; what the access log shows differs by path (see the asserts)."""
    s = through.stack
    before = len(s.upstreams["a"].requests)
    missing = s.get("/orders")
    assert missing.status_code == 401
    # One field with every accepted scheme's challenge (Envoy's ext_authz would drop
    # a second WWW-Authenticate field of a denied response).
    assert missing.headers.get_list("www-authenticate") == [
        'Bearer realm="shop", ApiKey realm="shop", Basic realm="shop", charset="UTF-8"'
    ]
    assert missing.text == "unauthorized: credentials are required\n"
    expired = s.get(
        "/orders", headers=bearer(rsa_key("k1").sign(claims(exp=int(time.time()) - 600)))
    )
    assert expired.status_code == 401
    assert expired.headers.get_list("www-authenticate") == [
        'Bearer realm="shop", error="invalid_token", error_description="the token has expired", '
        'ApiKey realm="shop", Basic realm="shop", charset="UTF-8"'
    ]
    assert expired.text == "unauthorized: the token has expired\n"
    assert expired.headers["cache-control"] == "no-store"
    assert len(s.upstreams["a"].requests) == before
    log = s.log_entries(2)
    assert [e["code"] for e in log] == [401, 401]
    ours = ["auth_unauthorized{missing_credentials}", "auth_unauthorized{jwt_expired}"]
    if through.authz:
        # Envoy sets %RESPONSE_CODE_DETAILS% itself for an ext_authz denial; asm-proxy's
        # details travel in the CheckResponse's dynamic metadata (key `details`).
        assert [e["details"] for e in log] == ["ext_authz_denied", "ext_authz_denied"]
        assert [through.metadata(e, "details") for e in log] == ours
    else:
        assert [e["details"] for e in log] == ours
    assert [through.auth_metadata(e) for e in log] == [
        {"decision": "deny", "reason": "missing_credentials", "status": 401},
        {"decision": "deny", "reason": "jwt_expired", "status": 401},
    ]


def test_claim_requirement_gives_403(through: Path_) -> None:
    """A verified caller without the admin group: 403 with insufficient_scope."""
    s = through.stack
    staff = rsa_key("k1").sign(claims(groups=["staff"]))
    resp = s.get("/admin/users", headers=bearer(staff))
    assert resp.status_code == 403
    assert resp.text == "forbidden: access to this resource is not granted\n"
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    ok = s.get("/admin/users", headers=bearer(rsa_key("k1").sign(claims())))
    assert ok.status_code == 200


def test_api_key_in_query_is_taken_out_of_the_path(through: Path_) -> None:
    """An API key in the query string: the consumer is forwarded and the upstream sees
    the path without the key."""
    s = through.stack
    resp = s.get(f"/reports?api_key={API_KEY}&month=5")
    if through.name == "ext_authz_http":
        # Envoy takes no :path from an HTTP answer: refused, never forwarded with the key.
        assert resp.status_code == 403
        assert "path rewrite" in resp.text
        return
    assert resp.status_code == 200
    seen = s.seen("a")
    assert seen.target == "/reports?month=5"
    assert seen.header("x-consumer") == "batch-job"


def test_basic_auth(through: Path_) -> None:
    """htpasswd (bcrypt): the right password passes with the user forwarded; a wrong one
    gets 401."""
    s = through.stack
    good = base64.b64encode(b"carol:s3cret").decode()
    resp = s.get("/orders", headers={"authorization": f"Basic {good}"})
    assert resp.status_code == 200
    assert s.seen("a").header("x-consumer") == "carol"
    assert s.seen("a").header("authorization") is None
    bad = base64.b64encode(b"carol:guess").decode()
    assert s.get("/orders", headers={"authorization": f"Basic {bad}"}).status_code == 401


def test_anonymous_path(through: Path_) -> None:
    """/public passes without credentials; a client-set identity header never arrives."""
    s = through.stack
    resp = s.get("/public/prices", headers={"x-consumer": "admin"})
    assert resp.status_code == 200
    assert s.seen("a").header("x-consumer") is None


def test_dry_run(stack: StackFactory, idp: JwksServer, tmp_path: Path) -> None:
    """dryRun: a request that would get 401 reaches the upstream; the access log says
    what would have happened, on both paths."""
    for kw in ({}, {"ext_authz": ExtAuthz(), "use_ext_proc": False}):
        s = stack(config(idp, tmp_path, dry_run=True), **kw)
        resp = s.get("/orders")
        assert resp.status_code == 200
        (entry,) = s.log_entries(1)
        ns = entry["authz_metadata"] if kw else entry["metadata"]
        assert ns["auth"] == {
            "decision": "dry_run_deny",
            "reason": "missing_credentials",
            "status": 401,
        }
        assert s.metric("asm_proxy_plugin_auth_decisions_total", decision="dry_run_deny") == 1


@pytest.mark.parametrize("path", ["ext_proc", "ext_authz"])
def test_key_rotation_while_requests_flow(
    stack: StackFactory, idp: JwksServer, tmp_path: Path, path: str
) -> None:
    """The issuer publishes a new key and signs with it while requests keep coming: every
    request passes, the first new-kid token makes asm-proxy fetch the set again; once the
    old key is withdrawn, its tokens are refused after the next refresh.

    The request that meets the new kid waits for the fetch: on a loaded machine that can
    outlast Envoy's default 200 ms, which would be Envoy's timeout, not a refused key;
    this test is about the keys, so Envoy waits longer."""
    kw: dict[str, Any] = (
        {"ext_authz": ExtAuthz(timeout="5s"), "use_ext_proc": False}
        if path == "ext_authz"
        else {"ext_proc": ExtProc(message_timeout="5s")}
    )
    s = stack(config(idp, tmp_path, refresh="300ms"), **kw)
    tokens = {kid: rsa_key(kid).sign(claims()) for kid in ("k1", "k2")}  # signed once
    current = ["k1"]
    statuses: list[tuple[str, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        give_up = time.monotonic() + 20
        while not stop.is_set() and len(statuses) < 400 and time.monotonic() < give_up:
            kid = current[0]
            resp = s.get("/orders", headers=bearer(tokens[kid]))
            statuses.append((kid, resp.status_code))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_for(lambda: len(statuses) >= 10)
        fetches = idp.fetches
        idp.serve(jwks(rsa_key("k1"), rsa_key("k2")))  # publish first, then sign with it
        current[0] = "k2"
        wait_for(lambda: sum(kid == "k2" for kid, _ in statuses) >= 20)
        assert idp.fetches > fetches
    finally:
        stop.set()
        worker.join(10)
    assert statuses and all(code == 200 for _, code in statuses), [
        x for x in statuses if x[1] != 200
    ]
    assert {kid for kid, _ in statuses} == {"k1", "k2"}

    idp.serve(jwks(rsa_key("k2")))  # the old key is withdrawn
    wait_for(lambda: s.get("/orders", headers=bearer(tokens["k1"])).status_code == 401)
    assert s.get("/orders", headers=bearer(tokens["k2"])).status_code == 200


def test_htpasswd_reload_while_serving(
    stack: StackFactory, idp: JwksServer, tmp_path: Path
) -> None:
    """A new htpasswd (renamed over the old, as a Secret update does) takes effect while
    Envoy keeps serving; a weak one that follows is refused and the last good one stays."""
    s = stack(config(idp, tmp_path), ext_authz=ExtAuthz(), use_ext_proc=False)
    dave = {"authorization": "Basic " + base64.b64encode(b"dave:n3w-pass").decode()}
    carol = {"authorization": "Basic " + base64.b64encode(b"carol:s3cret").decode()}
    assert s.get("/orders", headers=dave).status_code == 401
    new = tmp_path / "htpasswd.new"
    new.write_text("dave:" + bcrypt.hashpw(b"n3w-pass", bcrypt.gensalt(4)).decode() + "\n")
    new.replace(tmp_path / "htpasswd")
    wait_for(lambda: s.get("/orders", headers=dave).status_code == 200)
    assert s.get("/orders", headers=carol).status_code == 401

    weak = tmp_path / "htpasswd.weak"
    weak.write_text("dave:n3w-pass\n")  # plain text: refused
    weak.replace(tmp_path / "htpasswd")
    basic = s.plugin("auth").basic
    wait_for(lambda: basic.file.failures == 1)
    assert "plain-text" in basic.file.last_error
    assert s.get("/orders", headers=dave).status_code == 200
