"""The auth plugin's JWT path, through the shared test host, against a real JWKS endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from asm_proxy_handlers.auth import jwt as jwt_module
from tests.handlers.auth.helpers import (
    Hosts,
    allowed,
    auth_metadata,
    bearer,
    denied,
    plugin_of,
    provider,
)
from tests.support.jwks import ISSUER, JwksServer, claims, ec_key, ed_key, jwks, rsa_key
from tests.support.waiting import wait_for


def test_valid_token_is_accepted_and_forwarded_as_claims(idp: JwksServer, hosts: Hosts) -> None:
    """A valid RS256 token passes; its claims become headers; the token itself and any
    client-sent identity header are removed; the identity is in the metadata."""
    host = hosts({"jwt": {"providers": [provider(idp.url, claimsToMetadata=["sub", "groups"])]}})
    token = rsa_key("k1").sign(claims())
    step = allowed(host.request_headers({**bearer(token), "x-user": "mallory"}))
    assert step.headers.get_all("x-user") == ["alice"]
    assert step.headers["x-groups"] == "staff,admin"
    assert "authorization" not in step.headers
    assert auth_metadata(step) == {
        "decision": "allow",
        "reason": "allowed",
        "kind": "jwt",
        "consumer": "alice",
        "provider": "idp",
        "claims": {"sub": "alice", "groups": ["staff", "admin"]},
    }


def test_other_algorithms_of_the_same_set(idp: JwksServer, hosts: Hosts) -> None:
    """ES256 with the EC key, and PS256 with the RSA key (the JWK names no alg)."""
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    allowed(host.request_headers(bearer(ec_key("e1").sign(claims()))))
    host.new_exchange()
    allowed(host.request_headers(bearer(rsa_key("k1").sign(claims(), alg="PS256"))))


def test_eddsa_from_inline_jwks(hosts: Hosts) -> None:
    """An inline JWKS with an Ed25519 key verifies EdDSA tokens; no URL involved."""
    host = hosts(
        {
            "jwt": {
                "providers": [
                    {
                        "name": "inline",
                        "issuer": ISSUER,
                        "audiences": ["orders-api"],
                        "algorithms": ["EdDSA"],
                        "jwks": jwks(ed_key("d1")),
                    }
                ]
            }
        }
    )
    allowed(host.request_headers(bearer(ed_key("d1").sign(claims()))))
    host.new_exchange()
    denied(host.request_headers(bearer(ed_key("other").sign(claims()))))


def test_forward_token_keeps_it(idp: JwksServer, hosts: Hosts) -> None:
    """forwardToken: true leaves the Authorization header for the upstream."""
    host = hosts({"jwt": {"providers": [provider(idp.url, forwardToken=True)]}})
    token = rsa_key("k1").sign(claims())
    step = allowed(host.request_headers(bearer(token)))
    assert step.headers["authorization"] == f"Bearer {token}"


def test_token_from_cookie_query_and_named_header(idp: JwksServer, hosts: Hosts) -> None:
    """Each configured place works, and the token is taken out of exactly that place."""
    sources = [{"header": "x-token"}, {"cookie": "session"}, {"query": "access_token"}]
    host = hosts({"jwt": {"providers": [provider(idp.url, sources=sources)]}})
    token = rsa_key("k1").sign(claims())

    step = allowed(host.request_headers({"x-token": token}))
    assert "x-token" not in step.headers

    host.new_exchange()
    step = allowed(host.request_headers({"cookie": f"theme=dark; session={token}; lang=en"}))
    assert step.headers["cookie"] == "theme=dark; lang=en"

    host.new_exchange()
    step = allowed(host.request_headers({":path": f"/orders?a=1&access_token={token}&b=%20"}))
    assert step.headers[":path"] == "/orders?a=1&b=%20"
    assert step.clear_route_cache


def test_missing_token_challenges_without_error(idp: JwksServer, hosts: Hosts) -> None:
    """No credential: 401, `WWW-Authenticate: Bearer realm=...` without an error code
    (RFC 6750 section 3.1), a short body and details naming the reason."""
    host = hosts({"realm": "orders", "jwt": {"providers": [provider(idp.url)]}})
    reply = denied(host.request_headers({}))
    assert reply.headers.get_all("www-authenticate") == ['Bearer realm="orders"']
    assert reply.body == b"unauthorized: credentials are required\n"
    assert reply.details == "auth_unauthorized{missing_credentials}"
    assert reply.headers["cache-control"] == "no-store"


def test_invalid_token_challenge_names_the_error(idp: JwksServer, hosts: Hosts) -> None:
    """An invalid token: error="invalid_token" with a description in the challenge."""
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    token = rsa_key("k1").sign(claims(exp=int(time.time()) - 3600))
    reply = denied(host.request_headers(bearer(token)))
    assert reply.headers["www-authenticate"] == (
        'Bearer realm="asm-proxy", error="invalid_token", error_description="the token has expired"'
    )
    assert reply.body == b"unauthorized: the token has expired\n"
    assert reply.details == "auth_unauthorized{jwt_expired}"


def test_providers_are_chosen_by_issuer(idp: JwksServer, hosts: Hosts) -> None:
    """Two providers: each token is verified by the provider of its issuer only."""
    partner = JwksServer(jwks(rsa_key("p1")))
    try:
        host = hosts(
            {
                "jwt": {
                    "providers": [
                        provider(idp.url),
                        provider(partner.url, name="partner", issuer="https://partner.test"),
                    ]
                }
            }
        )
        good = rsa_key("p1").sign(claims(iss="https://partner.test", sub="bob"))
        step = allowed(host.request_headers(bearer(good)))
        assert auth_metadata(step)["provider"] == "partner"
        # A partner-issued token signed with the corp key does not verify.
        host.new_exchange()
        forged = rsa_key("k1").sign(claims(iss="https://partner.test"), kid="p1")
        assert denied(host.request_headers(bearer(forged))).details == (
            "auth_unauthorized{jwt_bad_signature}"
        )
    finally:
        partner.stop()


def test_hmac_provider_with_secret_file(tmp_path: Path, hosts: Hosts) -> None:
    """HS256 works only with a configured secret file."""
    secret = b"s" * 32
    (tmp_path / "secret").write_bytes(secret + b"\n")
    host = hosts(
        {
            "jwt": {
                "providers": [
                    {
                        "name": "internal",
                        "issuer": ISSUER,
                        "audiences": ["orders-api"],
                        "algorithms": ["HS256"],
                        "hmacSecretFile": str(tmp_path / "secret"),
                    }
                ]
            }
        }
    )
    import jwt

    allowed(host.request_headers(bearer(jwt.encode(claims(), secret, algorithm="HS256"))))
    host.new_exchange()
    wrong = jwt.encode(claims(), b"t" * 32, algorithm="HS256")
    assert denied(host.request_headers(bearer(wrong))).details == (
        "auth_unauthorized{jwt_bad_signature}"
    )


def test_jwks_file_is_reloaded_and_a_bad_one_refused(tmp_path: Path, hosts: Hosts) -> None:
    """A changed JWKS file is used; a broken new file keeps the previous keys."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key("k1"))))
    host = hosts(
        {
            "secretsReloadInterval": 0,  # checked by hand below
            "jwt": {
                "providers": [
                    {
                        "name": "file",
                        "issuer": ISSUER,
                        "audiences": ["orders-api"],
                        "jwksFile": str(path),
                    }
                ]
            },
        }
    )
    plugin = plugin_of(host)
    new = rsa_key("k2").sign(claims())
    denied(host.request_headers(bearer(new)))

    path.write_text(json.dumps(jwks(rsa_key("k2"))))
    plugin.secrets.check_all()
    host.new_exchange()
    allowed(host.request_headers(bearer(new)))

    path.write_text('{"keys": "broken"')
    plugin.secrets.check_all()
    (watched,) = plugin.secrets.files
    assert watched.failures == 1
    assert "not JSON" in (watched.last_error or "")
    host.new_exchange()
    allowed(host.request_headers(bearer(new)))


def test_keys_unavailable_then_recovered(hosts: Hosts) -> None:
    """An issuer that is down at start: 401 jwks_unavailable (never a crash), and once it
    is back the next request after minRefetchInterval fetches and passes."""
    server = JwksServer({"error": "down"})
    server.status = 503
    try:
        host = hosts({"jwt": {"providers": [provider(server.url, minRefetchInterval="50ms")]}})
        token = rsa_key("k1").sign(claims())
        reply = denied(host.request_headers(bearer(token)))
        assert reply.details == "auth_unauthorized{jwks_unavailable}"
        server.serve(jwks(rsa_key("k1")))
        give_up = time.monotonic() + 5
        while True:
            host.new_exchange()
            step = host.request_headers(bearer(token))
            if step.immediate is None or time.monotonic() > give_up:
                break
            time.sleep(0.05)
        allowed(step)
    finally:
        server.stop()


def test_dry_run_lets_everything_through_but_counts(idp: JwksServer, hosts: Hosts) -> None:
    """dryRun: a request that would be refused passes; the metadata and counters say
    what would have happened; a good token is still turned into headers."""
    host = hosts({"dryRun": True, "jwt": {"providers": [provider(idp.url)]}})
    step = allowed(host.request_headers({"x-user": "mallory"}))
    assert "x-user" not in step.headers
    assert auth_metadata(step) == {
        "decision": "dry_run_deny",
        "reason": "missing_credentials",
        "status": 401,
    }
    host.new_exchange()
    step = allowed(host.request_headers(bearer(rsa_key("k1").sign(claims()))))
    assert step.headers["x-user"] == "alice"
    decisions = "asm_proxy_plugin_auth_decisions_total"
    assert host.metric(decisions, decision="dry_run_deny") == 1
    assert host.metric(decisions, decision="allow", status="200") == 1


def test_whole_payload_in_metadata(idp: JwksServer, hosts: Hosts) -> None:
    """claimsToMetadata ["*"] puts the whole verified payload in the metadata."""
    host = hosts({"jwt": {"providers": [provider(idp.url, claimsToMetadata=["*"])]}})
    payload = claims(tenant={"id": 7})
    step = allowed(host.request_headers(bearer(rsa_key("k1").sign(payload))))
    assert auth_metadata(step)["claims"] == payload


def test_claim_with_newline_is_not_forwarded(idp: JwksServer, hosts: Hosts) -> None:
    """A claim value that cannot be a header value is dropped, not injected."""
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    step = allowed(host.request_headers(bearer(rsa_key("k1").sign(claims(sub="a\r\nx-admin: 1")))))
    assert "x-user" not in step.headers
    assert "x-admin" not in step.headers


def test_slow_refetch_refuses_one_request_not_the_next(hosts: Hosts) -> None:
    """A new kid while the issuer is slow: the request waits only keyFetchWait and is
    refused (401, not a time-out) while the issuer has not answered yet; the fetch goes
    on, and once it is answered the next request passes."""
    server = JwksServer(jwks(rsa_key("k1")))
    try:
        # The fetch may take far longer than keyFetchWait (fetchTimeout 30 s): only
        # keyFetchWait can end the request's wait while the issuer holds its answer.
        wait = provider(server.url, keyFetchWait="50ms", fetchTimeout="30s")
        host = hosts({"jwt": {"providers": [wait]}})
        host.request_headers({})  # started with k1
        server.serve(jwks(rsa_key("k1"), rsa_key("k2")))
        # Held until released below (5 s at most: a plugin that waited for the fetch
        # would then get k2 and let the request in, and the test would fail).
        server.hold(limit=5)
        answered = server.answers
        token = rsa_key("k2").sign(claims())
        host.new_exchange()
        reply = denied(host.request_headers(bearer(token)))
        assert reply.details == "auth_unauthorized{jwt_unknown_kid}"
        assert server.answers == answered  # refused before the issuer answered
        server.release()
        remote = plugin_of(host).providers["idp"].remote
        assert remote is not None

        def kids() -> list[str]:
            host.advance(0.02)  # the fetch runs on the host's loop
            return remote.keys.kids() if remote.keys else []

        wait_for(lambda: "k2" in kids(), "the slow fetch to bring k2", 10)
        host.new_exchange()
        allowed(host.request_headers(bearer(token)))
    finally:
        server.stop()


def _count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each token PyJWT is asked to verify (the unverified peek is not PyJWT's)."""
    seen: list[str] = []
    real = jwt_module.pyjwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt_module.pyjwt, "decode", counting)
    return seen


def test_verified_token_is_remembered_until_the_keys_change(
    tmp_path: Path, hosts: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same token again is not verified again and gives the same identity; once the
    key that signed it is gone from the key set, it is refused."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(rsa_key("k1"))))
    host = hosts(
        {
            "secretsReloadInterval": 0,
            "jwt": {"providers": [{**provider("unused"), "jwksUri": None, "jwksFile": str(path)}]},
        }
    )
    verified = _count_verifications(monkeypatch)
    token = rsa_key("k1").sign(claims())
    first = allowed(host.request_headers(bearer(token)))
    host.new_exchange()
    again = allowed(host.request_headers(bearer(token)))
    assert verified == [token]
    assert again.headers == first.headers and auth_metadata(again) == auth_metadata(first)

    path.write_text(json.dumps(jwks(rsa_key("k2"))))
    plugin_of(host).secrets.check_all()
    host.new_exchange()
    denied(host.request_headers(bearer(token)))


def test_remembered_token_still_expires(
    idp: JwksServer, hosts: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered token holds only until its exp (clock skew 0 here)."""
    host = hosts({"jwt": {"providers": [provider(idp.url, clockSkew=0)]}})
    exp = int(time.time()) + 1
    token = rsa_key("k1").sign(claims(exp=exp))
    verified = _count_verifications(monkeypatch)
    allowed(host.request_headers(bearer(token)))
    while time.time() < exp + 0.05:
        time.sleep(0.05)
    host.new_exchange()
    reply = denied(host.request_headers(bearer(token)))
    assert reply.details == "auth_unauthorized{jwt_expired}"
    assert verified == [token, token]


def test_verified_cache_is_bounded_and_can_be_off(
    idp: JwksServer, hosts: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The least recently used token goes first; size 0 verifies every time."""
    verified = _count_verifications(monkeypatch)
    host = hosts({"jwt": {"providers": [provider(idp.url, verifiedCacheSize=2)]}})
    a, b, c = (rsa_key("k1").sign(claims(sub=name)) for name in "abc")
    for token in (a, b, a, c, a, b):  # c pushes out b (a was used since)
        host.new_exchange()
        allowed(host.request_headers(bearer(token)))
    assert verified == [a, b, c, b]

    verified.clear()
    off = hosts({"jwt": {"providers": [provider(idp.url, verifiedCacheSize=0)]}})
    for _ in range(2):
        off.new_exchange()
        allowed(off.request_headers(bearer(a)))
    assert verified == [a, a]


def test_a_new_kid_during_a_fetch_that_read_the_old_set(hosts: Hosts) -> None:
    """A refresh is under way and has already read the old set when the issuer publishes
    a new key and a token signed with it arrives: the lookup joins that fetch, finds no
    key, and fetches once more instead of refusing a valid token."""
    server = JwksServer(jwks(rsa_key("k1")))
    try:
        host = hosts({"jwt": {"providers": [provider(server.url)]}})
        host.request_headers({})  # started with k1
        remote = plugin_of(host).providers["idp"].remote
        assert remote is not None
        server.hold(10)
        fetches = server.fetches

        async def start_refresh() -> None:
            remote.refresh()

        host.run(start_refresh())
        give_up = time.monotonic() + 5
        while server.fetches == fetches:  # the issuer has read the old set, and holds it
            assert time.monotonic() < give_up
            host.run(asyncio.sleep(0.01))
        server.serve(jwks(rsa_key("k1"), rsa_key("k2")))

        async def look_up_k2() -> bool:
            lookup = asyncio.ensure_future(remote.refetch_for_unknown_kid(10, "k2"))
            for _ in range(3):
                await asyncio.sleep(0)  # it joins the held fetch
            assert not lookup.done()
            server.release()  # the old set arrives
            return await lookup

        assert host.run(look_up_k2())
        assert remote.keys is not None and "k2" in remote.keys.kids()
        assert remote.kid_refetches == 1
        host.new_exchange()
        allowed(host.request_headers(bearer(rsa_key("k2").sign(claims()))))
    finally:
        server.stop()
