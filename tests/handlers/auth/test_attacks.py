"""Attacks on JWT verification, one test each, against a real JWKS endpoint.

Each forged or broken token must be refused with 401 and the reason that explains it;
none may reach the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from cryptography.hazmat.primitives import serialization

from tests.handlers.auth.helpers import Hosts, allowed, bearer, denied, provider
from tests.support.jwks import JwksServer, b64url, claims, ec_key, rsa_key, unsigned_token


def _reason(hosts: Hosts, url: str, headers: dict[str, str], **overrides: object) -> str:
    host = hosts({"jwt": {"providers": [provider(url, **overrides)]}})
    reply = denied(host.request_headers(headers))
    assert reply.headers["www-authenticate"].startswith('Bearer realm="asm-proxy"')
    details: str = reply.details
    return details


def _hs256(header: dict[str, object], payload: dict[str, object], secret: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def test_alg_none_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """An unsigned token (alg none, empty signature) is refused, in any spelling."""
    for alg in ("none", "None", "NONE"):
        token = unsigned_token(claims(), {"alg": alg, "kid": "k1"})
        assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_malformed}"
        # With a dummy signature it gets past the shape check and is refused by alg.
        assert _reason(hosts, idp.url, bearer(token + "c2ln")) == "auth_unauthorized{jwt_alg_none}"


def test_hs256_signed_with_the_rsa_public_key_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """Key-type confusion: an HS256 token whose HMAC secret is the provider's RSA public
    key (PEM, or the JWK's modulus) is refused; the RSA key is never used as a secret."""
    public = rsa_key("k1").private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    modulus = base64.urlsafe_b64decode(rsa_key("k1").public_jwk["n"] + "==")
    for secret in (pem, modulus):
        token = _hs256({"alg": "HS256", "kid": "k1", "typ": "JWT"}, claims(), secret)
        assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_alg_not_allowed}"
    # Even a provider that allows HS256 verifies only with its own secret file, and
    # refuses a key set here at load time (see test_config).


def test_expired_is_refused_beyond_the_clock_skew(idp: JwksServer, hosts: Hosts) -> None:
    """exp in the past by more than clockSkew: refused; within the skew: accepted."""
    now = int(time.time())
    old = rsa_key("k1").sign(claims(exp=now - 120, iat=now - 600))
    assert _reason(hosts, idp.url, bearer(old), clockSkew="60s") == "auth_unauthorized{jwt_expired}"
    host = hosts({"jwt": {"providers": [provider(idp.url, clockSkew="60s")]}})
    allowed(host.request_headers(bearer(rsa_key("k1").sign(claims(exp=now - 20)))))


def test_not_yet_valid_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """nbf (or iat) in the future by more than the skew: refused."""
    later = int(time.time()) + 600
    for field in ("nbf", "iat"):
        token = rsa_key("k1").sign(claims(**{field: later, "exp": later + 600}))
        assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_not_yet_valid}"


def test_wrong_issuer_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """A correctly signed token from another issuer is refused."""
    token = rsa_key("k1").sign(claims(iss="https://evil.test"))
    assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_wrong_issuer}"


def test_wrong_audience_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """A token minted for another service is refused, as is one with no audience."""
    token = rsa_key("k1").sign(claims(aud="billing-api"))
    assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_wrong_audience}"
    token = rsa_key("k1").sign(claims(aud=None))
    assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_missing_claim}"


def test_missing_exp_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """A token that never expires is refused unless requireExp is turned off."""
    token = rsa_key("k1").sign(claims(exp=None))
    assert _reason(hosts, idp.url, bearer(token)) == "auth_unauthorized{jwt_missing_claim}"
    host = hosts({"jwt": {"providers": [provider(idp.url, requireExp=False)]}})
    allowed(host.request_headers(bearer(token)))


def test_unknown_kid_is_refused_and_refetches_at_a_bounded_rate(
    idp: JwksServer, hosts: Hosts
) -> None:
    """A kid the set does not have: refused, after at most one extra fetch of the JWKS
    per minRefetchInterval however many such tokens arrive."""
    host = hosts({"jwt": {"providers": [provider(idp.url, minRefetchInterval="1h")]}})
    token = rsa_key("stranger").sign(claims())
    before = idp.fetches
    for _ in range(5):
        host.new_exchange()
        reply = denied(host.request_headers(bearer(token)))
        assert reply.details == "auth_unauthorized{jwt_unknown_kid}"
    assert idp.fetches == before + 1  # one refetch for the first; the rest wait an hour

    host2 = hosts({"jwt": {"providers": [provider(idp.url, minRefetchInterval="300ms")]}})
    host2.request_headers({})  # started: one fetch
    start = idp.fetches
    for _ in range(5):
        host2.new_exchange()
        denied(host2.request_headers(bearer(token)))
    assert idp.fetches == start + 1
    time.sleep(0.35)
    host2.new_exchange()
    denied(host2.request_headers(bearer(token)))
    assert idp.fetches == start + 2  # the interval has passed: one more


def test_bad_signature_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """A payload changed after signing, and a token signed by another key under the
    provider's kid, are both refused."""
    token = rsa_key("k1").sign(claims())
    head, _, sig = token.split(".")
    tampered = f"{head}.{b64url(json.dumps(claims(sub='admin')).encode())}.{sig}"
    assert _reason(hosts, idp.url, bearer(tampered)) == "auth_unauthorized{jwt_bad_signature}"
    impostor = rsa_key("impostor").sign(claims(), kid="k1")
    assert _reason(hosts, idp.url, bearer(impostor)) == "auth_unauthorized{jwt_bad_signature}"
    ec_impostor = ec_key("impostor").sign(claims(), kid="e1")
    assert _reason(hosts, idp.url, bearer(ec_impostor)) == "auth_unauthorized{jwt_bad_signature}"


def test_token_in_the_wrong_place_counts_as_missing(idp: JwksServer, hosts: Hosts) -> None:
    """A valid token where the provider does not look for it (a query parameter, another
    header, the wrong scheme) is no credential: 401 without an error code."""
    token = rsa_key("k1").sign(claims())
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    for headers in (
        {":path": f"/?access_token={token}"},
        {"x-token": token},
        {"authorization": f"Token {token}"},
        {"cookie": f"session={token}"},
    ):
        host.new_exchange()
        reply = denied(host.request_headers(headers))
        assert reply.details == "auth_unauthorized{missing_credentials}"
        assert reply.headers["www-authenticate"] == 'Bearer realm="asm-proxy"'


def test_two_tokens_are_refused_as_ambiguous(idp: JwksServer, hosts: Hosts) -> None:
    """Two Authorization headers with tokens: refused (invalid_request), so the upstream
    can never read a different token from the one that was checked."""
    good = rsa_key("k1").sign(claims())
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    reply = denied(
        host.request_headers([("authorization", f"Bearer {good}"), ("authorization", "Bearer x")])
    )
    assert reply.details == "auth_unauthorized{ambiguous_credentials}"
    assert 'error="invalid_request"' in reply.headers["www-authenticate"]


def test_oversized_token_is_refused_before_parsing(idp: JwksServer, hosts: Hosts) -> None:
    """A token above maxTokenBytes is refused without being decoded."""
    token = rsa_key("k1").sign(claims(padding="x" * 3000))
    assert (
        _reason(hosts, idp.url, bearer(token), maxTokenBytes=2048)
        == "auth_unauthorized{jwt_too_large}"
    )
    host = hosts({"jwt": {"providers": [provider(idp.url, maxTokenBytes=8192)]}})
    allowed(host.request_headers(bearer(token)))


def test_malformed_base64_is_refused(idp: JwksServer, hosts: Hosts) -> None:
    """Segments that are not base64url (bad characters, padding, impossible lengths,
    not JSON, too few or too many segments) are refused as malformed."""
    token = rsa_key("k1").sign(claims())
    head, body, sig = token.split(".")
    host = hosts({"jwt": {"providers": [provider(idp.url)]}})
    for bad in (
        f"{head}.{body}!.{sig}",
        f"{head}=.{body}.{sig}",
        f"{head}.{body}{'a' * ((1 - len(body)) % 4)}.{sig}",  # length 1 mod 4: impossible
        f"{head}.{body}+/.{sig}",
        f"{b64url(b'not json')}.{body}.{sig}",
        f"{head}.{b64url(b'[1, 2]')}.{sig}",
        f"{head}.{body}",
        f"{head}.{body}.{sig}.{sig}.{sig}",
        "",
    ):
        host.new_exchange()
        reply = denied(host.request_headers(bearer(bad)))
        assert reply.details == "auth_unauthorized{jwt_malformed}", bad
