"""`asm-proxy validate` refuses insecure auth configs, naming file, plugin and field."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from asm_proxy.testing import check_config
from tests.support.jwks import jwks, rsa_key

GOOD_PROVIDER = {
    "name": "idp",
    "issuer": "https://idp.test",
    "audiences": ["api"],
    "jwksUri": "https://idp.test/jwks",
}


def provider(**changes: Any) -> dict[str, Any]:
    out = {**GOOD_PROVIDER, **changes}
    return {k: v for k, v in out.items() if v is not None}


def validate(config: dict[str, Any]) -> str:
    """What validate prints of a config with this auth plugin config (empty when valid)."""
    text = yaml.safe_dump(
        {"plugins": [{"name": "auth", "type": "auth", "phase": "AUTHN", "config": config}]}
    )
    return "\n".join(check_config(text).problems)


@cache
def bcrypt_line(cost: int) -> str:
    return "alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(cost)).decode() + "\n"


def files(tmp_path: Path) -> dict[str, Path]:
    """Secrets files of every kind, some of them bad, for the cases below."""
    made = {
        "plain": "alice:wonderland\n",
        "apr1": "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n",
        "sha1": "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        "des": "alice:rqXexS6ZhobKA\n",
        "sha512": "alice:$6$saltsalt$" + "a" * 86 + "\n",
        "lowcost": bcrypt_line(5),
        "good": bcrypt_line(10),
        "short-secret": "too short\n",
        "long-secret": "x" * 32 + "\n",
        "private-jwks": json.dumps({"keys": [{**rsa_key("k1").public_jwk, "d": "AQAB"}]}),
        "oct-jwks": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        "weak-jwks": json.dumps(jwks(rsa_key("small", 1024))),
        "clear-keys": "keys: [{consumer: a, key: hunter2}]\n",
    }
    out = {}
    for name, text in made.items():
        path = tmp_path / name
        path.write_text(text)
        out[name] = path
    return out


CASES: list[tuple[str, Any, str, str]] = [
    (
        "alg none",
        lambda f: {"jwt": {"providers": [provider(algorithms=["RS256", "none"])]}},
        "jwt.providers[0].algorithms",
        "alg 'none' (unsigned tokens) is never accepted",
    ),
    (
        "HS with no secret",
        lambda f: {"jwt": {"providers": [provider(algorithms=["HS256"], jwksUri=None)]}},
        "jwt.providers[0]",
        "need hmacSecretFile",
    ),
    (
        "HS with a short secret",
        lambda f: {
            "jwt": {
                "providers": [
                    provider(
                        algorithms=["HS256"], jwksUri=None, hmacSecretFile=str(f["short-secret"])
                    )
                ]
            }
        },
        "jwt.providers[0].hmacSecretFile",
        "need at least 32",
    ),
    (
        "HS mixed with RS",
        lambda f: {
            "jwt": {
                "providers": [
                    provider(algorithms=["HS256", "RS256"], hmacSecretFile=str(f["long-secret"]))
                ]
            }
        },
        "jwt.providers[0]",
        "mixes HMAC",
    ),
    (
        "a provider with no keys",
        lambda f: {"jwt": {"providers": [provider(jwksUri=None)]}},
        "jwt.providers[0]",
        "the provider has no keys",
    ),
    (
        "JWKS over plain http",
        lambda f: {"jwt": {"providers": [provider(jwksUri="http://idp.example.com/jwks")]}},
        "jwt.providers[0].jwksUri",
        "use https",
    ),
    (
        "no audiences",
        lambda f: {"jwt": {"providers": [provider(audiences=[])]}},
        "jwt.providers[0].audiences",
        "list the audiences",
    ),
    (
        "no issuer",
        lambda f: {"jwt": {"providers": [provider(issuer=" ")]}},
        "jwt.providers[0].issuer",
        "issuer must not be empty",
    ),
    (
        "a private key in the JWKS",
        lambda f: {"jwt": {"providers": [provider(jwksUri=None, jwksFile=str(f["private-jwks"]))]}},
        "jwt.providers[0].jwksFile",
        "publish public keys only",
    ),
    (
        "a symmetric key in the JWKS",
        lambda f: {"jwt": {"providers": [provider(jwksUri=None, jwksFile=str(f["oct-jwks"]))]}},
        "jwt.providers[0].jwksFile",
        "symmetric (oct) key",
    ),
    (
        "a 1024-bit RSA key",
        lambda f: {
            "jwt": {"providers": [provider(jwksUri=None, jwks=jwks(rsa_key("small", 1024)))]}
        },
        "jwt.providers[0].jwks",
        "1024-bit RSA key",
    ),
    (
        "a missing JWKS file",
        lambda f: {
            "jwt": {"providers": [provider(jwksUri=None, jwksFile="/nonexistent/jwks.json")]}
        },
        "jwt.providers[0].jwksFile",
        "cannot read",
    ),
    (
        "clock skew too large",
        lambda f: {"jwt": {"providers": [provider(clockSkew="1h")]}},
        "jwt.providers[0].clockSkew",
        "fix the clocks",
    ),
    (
        "plain-text password",
        lambda f: {"basic": {"htpasswdFile": str(f["plain"])}},
        "basic.htpasswdFile",
        "a plain-text password",
    ),
    (
        "MD5 apr1",
        lambda f: {"basic": {"htpasswdFile": str(f["apr1"])}},
        "basic.htpasswdFile",
        "an MD5 (apr1) hash",
    ),
    (
        "SHA-1",
        lambda f: {"basic": {"htpasswdFile": str(f["sha1"])}},
        "basic.htpasswdFile",
        "a SHA-1 hash",
    ),
    (
        "DES crypt",
        lambda f: {"basic": {"htpasswdFile": str(f["des"])}},
        "basic.htpasswdFile",
        "a DES crypt hash",
    ),
    (
        "SHA-512 crypt",
        lambda f: {"basic": {"htpasswdFile": str(f["sha512"])}},
        "basic.htpasswdFile",
        "a SHA-512-crypt hash",
    ),
    (
        "bcrypt below the minimum cost",
        lambda f: {"basic": {"htpasswdFile": str(f["lowcost"])}},
        "basic.htpasswdFile",
        "bcrypt cost 5 is below minCost 10",
    ),
    (
        "an API key in clear (config)",
        lambda f: {"apiKeys": {"keys": [{"consumer": "a", "key": "hunter2"}]}},
        "apiKeys.keys[0]",
        "API keys are stored hashed",
    ),
    (
        "an API key in clear (file)",
        lambda f: {"apiKeys": {"file": str(f["clear-keys"])}},
        "apiKeys.file",
        "API keys are stored hashed",
    ),
    (
        "a hash that is not SHA-256",
        lambda f: {"apiKeys": {"keys": [{"consumer": "a", "sha256": "abc"}]}},
        "apiKeys.keys[0].sha256",
        "64 hex digits",
    ),
    (
        "no credentials at all",
        lambda f: {"rules": []},
        "",
        "configure at least one of jwt, apiKeys, basic",
    ),
    (
        "a rule naming a provider that does not exist",
        lambda f: {"jwt": {"providers": [provider()]}, "rules": [{"credentials": ["jwt:nope"]}]},
        "",
        "rules[0]: there is no jwt provider named 'nope'",
    ),
    (
        "a rule naming an unconfigured kind",
        lambda f: {"jwt": {"providers": [provider()]}, "rules": [{"credentials": ["basic"]}]},
        "",
        "rules[0]: credential 'basic' is not configured",
    ),
    (
        "anonymous with require",
        lambda f: {
            "jwt": {"providers": [provider()]},
            "rules": [{"anonymous": True, "require": {"consumers": ["a"]}}],
        },
        "rules[0]",
        "drop require",
    ),
    (
        "a rule refusing everything",
        lambda f: {"jwt": {"providers": [provider()]}, "rules": [{"credentials": []}]},
        "rules[0]",
        "refuses everything",
    ),
    (
        "an identity header that is a pseudo-header",
        lambda f: {"jwt": {"providers": [provider(claimsToHeaders={":path": "sub"})]}},
        "jwt.providers[0].claimsToHeaders",
        "pseudo-headers cannot carry identity",
    ),
]


@pytest.mark.parametrize(("title", "make", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_insecure_config_is_refused(
    tmp_path: Path,
    title: str,
    make: Any,
    field: str,
    message: str,
) -> None:
    """validate exits 1 with `file:line: plugin plugins[0] "auth": field '...': message`."""
    err = validate(make(files(tmp_path)))
    assert err, f"{title}: accepted"
    where = f"field 'config.{field}'" if field else "field 'config'"
    assert f'plugin plugins[0] "auth": {where}: ' in err, err
    assert message in err, err


def test_good_config_is_accepted(tmp_path: Path) -> None:
    """The same fields with safe values validate."""
    f = files(tmp_path)
    digest = hashlib.sha256(b"key").hexdigest()
    config = {
        "jwt": {
            "providers": [
                provider(),
                provider(
                    name="internal",
                    algorithms=["HS256"],
                    jwksUri=None,
                    hmacSecretFile=str(f["long-secret"]),
                ),
            ]
        },
        "apiKeys": {"keys": [{"consumer": "a", "sha256": digest}]},
        "basic": {"htpasswdFile": str(f["good"])},
        "rules": [{"match": [{"paths": [{"prefix": "/p"}]}], "anonymous": True}],
    }
    assert validate(config) == ""


def test_fail_open_is_loaded_with_a_warning() -> None:
    """FAIL_OPEN on auth loads (it may be meant) but validate says what it costs."""
    digest = hashlib.sha256(b"key").hexdigest()
    entry = {
        "name": "auth",
        "type": "auth",
        "phase": "AUTHN",
        "failStrategy": "FAIL_OPEN",
        "config": {"apiKeys": {"keys": [{"consumer": "a", "sha256": digest}]}},
    }
    headers = {**entry, "name": "tag", "type": "headers", "config": {}}
    result = check_config(yaml.safe_dump({"plugins": [entry, headers]}, sort_keys=False))
    assert result.problems == []
    (warning,) = result.warnings
    assert warning.startswith(
        "asm-proxy.yaml:5: plugin plugins[0] \"auth\": field 'failStrategy': "
    )
    assert "FAIL_OPEN on plugin type 'auth' lets a request through unchecked" in warning
