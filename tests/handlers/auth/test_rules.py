"""Rules: per host/path/method credentials, anonymous access and authorization."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.handlers.auth.helpers import Hosts, allowed, auth_metadata, bearer, denied, provider
from tests.support.jwks import JwksServer, claims, rsa_key

KEY = "batch-key-0123456789"


def config(url: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "jwt": {"providers": [provider(url)]},
        "apiKeys": {
            "keys": [{"consumer": "batch", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]
        },
        "rules": rules,
    }


RULES: list[dict[str, Any]] = [
    {"match": [{"paths": [{"prefix": "/public"}]}], "anonymous": True},
    {
        "match": [{"paths": [{"prefix": "/admin"}]}],
        "credentials": ["jwt"],
        "require": {"claims": {"groups": "admin"}},
    },
    {
        "match": [{"paths": [{"prefix": "/orders"}], "methods": ["POST"]}],
        "require": {"claims": {"scope": "orders:write"}},
    },
    {
        "match": [{"paths": [{"prefix": "/batch"}]}],
        "credentials": ["apiKey"],
        "require": {"consumers": ["batch"]},
    },
    {"match": [{"hosts": ["internal.example.com"]}], "credentials": ["jwt:idp"]},
]


def test_anonymous_path_passes_without_credentials(idp: JwksServer, hosts: Hosts) -> None:
    """anonymous: a request with no credential passes, identity headers still stripped."""
    host = hosts(config(idp.url, RULES))
    step = allowed(host.request_headers({":path": "/public/x", "x-user": "root"}))
    assert "x-user" not in step.headers
    assert auth_metadata(step) == {"decision": "allow", "reason": "anonymous"}


def test_anonymous_path_still_refuses_a_bad_token(idp: JwksServer, hosts: Hosts) -> None:
    """anonymous allows a missing credential, not an invalid one (as jwt_authn's
    allow_missing)."""
    host = hosts(config(idp.url, RULES))
    reply = denied(host.request_headers({":path": "/public/x", **bearer("a.b.c")}))
    assert reply.details == "auth_unauthorized{jwt_malformed}"


def test_anonymous_path_uses_a_good_token(idp: JwksServer, hosts: Hosts) -> None:
    """anonymous with a valid token: the identity is still forwarded."""
    host = hosts(config(idp.url, RULES))
    step = allowed(
        host.request_headers({":path": "/public/x", **bearer(rsa_key("k1").sign(claims()))})
    )
    assert step.headers["x-user"] == "alice"


def test_claim_requirement(idp: JwksServer, hosts: Hosts) -> None:
    """groups must contain admin: a member passes, a non-member gets 403 with an
    insufficient_scope challenge; an API key is not accepted there at all (401)."""
    host = hosts(config(idp.url, RULES))
    member = rsa_key("k1").sign(claims())
    outsider = rsa_key("k1").sign(claims(groups=["staff"], sub="bob"))
    allowed(host.request_headers({":path": "/admin/users", **bearer(member)}))
    host.new_exchange()
    reply = denied(host.request_headers({":path": "/admin/users", **bearer(outsider)}), 403)
    assert reply.details == "auth_forbidden{claim_not_allowed}"
    assert reply.body == b"forbidden: access to this resource is not granted\n"
    assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    host.new_exchange()
    reply = denied(host.request_headers({":path": "/admin/users", "x-api-key": KEY}))
    assert reply.details == "auth_unauthorized{missing_credentials}"
    assert reply.headers.get_all("www-authenticate") == ['Bearer realm="asm-proxy"']


def test_scope_is_split_on_spaces_and_methods_matter(idp: JwksServer, hosts: Hosts) -> None:
    """POST /orders needs the orders:write scope; GET /orders falls to the default rule."""
    host = hosts(config(idp.url, RULES))
    reader = rsa_key("k1").sign(claims(scope="orders:read"))
    writer = rsa_key("k1").sign(claims(scope="profile orders:write"))
    denied(host.request_headers({":method": "POST", ":path": "/orders", **bearer(reader)}), 403)
    host.new_exchange()
    allowed(host.request_headers({":method": "POST", ":path": "/orders", **bearer(writer)}))
    host.new_exchange()
    allowed(host.request_headers({":method": "GET", ":path": "/orders", **bearer(reader)}))


def test_consumer_requirement(idp: JwksServer, hosts: Hosts) -> None:
    """/batch takes only API keys, of the named consumers."""
    host = hosts(config(idp.url, RULES))
    step = allowed(host.request_headers({":path": "/batch/run", "x-api-key": KEY}))
    assert step.headers["x-consumer"] == "batch"
    host.new_exchange()
    reply = denied(
        host.request_headers({":path": "/batch/run", **bearer(rsa_key("k1").sign(claims()))})
    )
    assert reply.headers.get_all("www-authenticate") == ['ApiKey realm="asm-proxy"']


def test_default_rule_accepts_every_configured_credential(idp: JwksServer, hosts: Hosts) -> None:
    """No rule matched: a JWT or an API key passes; nothing at all gets one challenge
    per accepted scheme."""
    host = hosts(config(idp.url, RULES))
    allowed(host.request_headers({":path": "/other", "x-api-key": KEY}))
    host.new_exchange()
    allowed(host.request_headers({":path": "/other", **bearer(rsa_key("k1").sign(claims()))}))
    host.new_exchange()
    reply = denied(host.request_headers({":path": "/other"}))
    assert reply.headers.get_all("www-authenticate") == [
        'Bearer realm="asm-proxy", ApiKey realm="asm-proxy"'
    ]


def test_any_valid_credential_wins(idp: JwksServer, hosts: Hosts) -> None:
    """A garbage token beside a valid API key: the key identifies the caller (any
    accepted credential that verifies is enough, as jwt_authn's requires_any)."""
    host = hosts(config(idp.url, RULES))
    step = allowed(host.request_headers({":path": "/other", "x-api-key": KEY, **bearer("x.y.z")}))
    assert step.headers["x-consumer"] == "batch"
    # The unverified token stays where it was: only the credential used is removed.
    assert step.headers["authorization"] == "Bearer x.y.z"


def test_host_rule(idp: JwksServer, hosts: Hosts) -> None:
    """A rule on the host: only the named provider's tokens count there."""
    host = hosts(config(idp.url, RULES))
    reply = denied(host.request_headers({":authority": "internal.example.com", "x-api-key": KEY}))
    assert reply.details == "auth_unauthorized{missing_credentials}"


def test_entry_match_and_rules_together(idp: JwksServer, hosts: Hosts) -> None:
    """The entry's own match decides whether the plugin runs at all: a request outside
    it is not touched (not even its identity headers); inside, the rules decide."""
    host = hosts(config(idp.url, RULES), match=[{"paths": [{"prefix": "/api"}]}])
    step = allowed(host.request_headers({":path": "/health", "x-user": "root"}))
    assert step.headers["x-user"] == "root"
    host.new_exchange()
    denied(host.request_headers({":path": "/api/x"}))
