"""Parsers and the request path never crash on garbage: they refuse it with a reason."""

from __future__ import annotations

import json
from typing import Any

import jwt as pyjwt
from hypothesis import given
from hypothesis import strategies as st

from asm_proxy.api import Phase
from asm_proxy.testing import PluginHost
from asm_proxy_handlers.auth import AuthPlugin
from asm_proxy_handlers.auth.basic import decode_credentials
from asm_proxy_handlers.auth.identity import Failure
from asm_proxy_handlers.auth.jwks import ALL_ALGS, parse_jwks
from asm_proxy_handlers.auth.jwt import peek
from asm_proxy_handlers.auth.keyfiles import parse_htpasswd, parse_key_file
from tests.support.jwks import ISSUER, b64url, claims, jwks, rsa_key

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
jwk_like = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "XYZ", ""]) | json_values,
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "X25519"]) | json_values,
        "alg": st.sampled_from(sorted(ALL_ALGS)) | json_values,
        "kid": st.text(max_size=5) | json_values,
        "use": st.sampled_from(["sig", "enc"]) | json_values,
        "n": st.text(max_size=40) | json_values,
        "e": st.sampled_from(["AQAB", "", "!!"]) | json_values,
        "x": st.text(max_size=50) | json_values,
        "y": st.text(max_size=50) | json_values,
        "key_ops": json_values,
    },
)


@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_htpasswd_parser_only_refuses(data: bytes) -> None:
    """Any bytes: a user table, or ValueError."""
    try:
        users = parse_htpasswd(data, 4)
    except ValueError:
        return
    assert all(h.startswith(b"$2") for h in users.values())


@given(st.lists(jwk_like | json_values, max_size=4) | json_values)
def test_jwks_parser_only_refuses(keys: Any) -> None:
    """Any JSON document shaped roughly like a key set: keys, or ValueError."""
    for doc in ({"keys": keys}, keys):
        try:
            result = parse_jwks(doc if isinstance(doc, dict) else json.dumps(doc), ALL_ALGS)
        except ValueError:
            continue
        assert result.keys and all(k.by_alg for k in result.keys)


@given(st.binary(max_size=300))
def test_jwks_parser_on_bytes(data: bytes) -> None:
    """Arbitrary bytes are refused, never crash the parser."""
    try:
        result = parse_jwks(data, ["RS256"])
    except ValueError:
        return
    assert all(set(k.by_alg) == {"RS256"} for k in result.keys)


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps({"keys": v}).encode()))
def test_key_file_parser_only_refuses(data: bytes) -> None:
    """Any bytes: a key table, or ValueError."""
    try:
        table = parse_key_file(data)
    except ValueError:
        return
    assert all(len(digest) == 32 and consumer for digest, consumer in table)


@given(st.text(max_size=100))
def test_basic_credentials_decoder_never_raises(value: str) -> None:
    """Any text after "Basic ": a pair or None."""
    result = decode_credentials(value)
    assert result is None or (result[0] and ":" not in result[0])


_HOST: list[PluginHost] = []


def _host() -> PluginHost:
    if not _HOST:
        config = {
            "jwt": {
                "providers": [
                    {
                        "name": "inline",
                        "issuer": ISSUER,
                        "audiences": ["orders-api"],
                        "jwks": jwks(rsa_key("k1")),
                        "sources": [
                            {"header": "authorization", "prefix": "Bearer "},
                            {"cookie": "session"},
                            {"query": "access_token"},
                        ],
                    }
                ]
            },
            "apiKeys": {
                "keys": [{"consumer": "c", "sha256": "0" * 64}],
                "sources": [{"query": "k"}],
            },
        }
        _HOST.append(PluginHost(AuthPlugin, config, name="auth", phase=Phase.AUTHN))
    return _HOST[0]


header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=120,
)
segment = st.one_of(
    json_values.map(lambda v: b64url(json.dumps(v).encode())),
    st.text(alphabet="ABCabc019_-=+/!.", max_size=30),
)
jwt_like = st.tuples(segment, segment, segment).map(".".join)


@given(token=jwt_like | header_text, cookie=header_text, query=header_text)
def test_request_path_never_crashes(token: str, cookie: str, query: str) -> None:
    """Garbage in every place a credential is looked for: always a 401 (or a pass for a
    token that happens to verify, which garbage never does); never an error."""
    host = _host()
    host.new_exchange()
    step = host.request_headers(
        {
            "authorization": f"Bearer {token}",
            "cookie": cookie,
            ":path": "/x?" + query.replace(" ", "%20").replace("#", ""),
        }
    )
    assert step.immediate is not None
    assert step.immediate.status == 401
    assert step.immediate.details.startswith("auth_unauthorized{")


@given(
    alg=st.sampled_from(["RS256", "HS256", "none", "ES256", "RS384", ""]) | json_values,
    kid=json_values,
)
def test_forged_headers_never_crash(alg: Any, kid: Any) -> None:
    """A well-formed token with any alg/kid header values is refused cleanly."""
    host = _host()
    host.new_exchange()
    head = b64url(json.dumps({"alg": alg, "kid": kid}).encode())
    body = b64url(json.dumps(claims()).encode())
    step = host.request_headers({"authorization": f"Bearer {head}.{body}.c2ln"})
    assert step.immediate is not None and step.immediate.status == 401


def _pyjwt_peek(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """What PyJWT itself reads from a token without verifying it (the reference)."""
    try:
        header = pyjwt.get_unverified_header(token)
        payload = pyjwt.decode(token, options={"verify_signature": False})
    except (pyjwt.PyJWTError, ValueError, TypeError, RecursionError):
        return None
    return header, payload


base64url_text = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=30
)
segments = (
    json_values.map(lambda v: b64url(json.dumps(v).encode()))
    | st.binary(max_size=30).map(b64url)
    | base64url_text
)


@given(segments, segments, segments | st.text(max_size=5))
def test_peek_reads_what_pyjwt_reads(head: str, body: str, signature: str) -> None:
    """peek's own decoding takes and refuses the tokens PyJWT's would, with two deliberate
    differences: an empty signature is refused at once, and a `kid` of the wrong type is
    refused later, by Provider.verify (PyJWT refuses it in its header check)."""
    token = f"{head}.{body}.{signature}"
    ours = peek(token)
    reference = _pyjwt_peek(token)
    if reference is not None:
        assert ours == reference or (not signature and isinstance(ours, Failure))
    elif isinstance(ours, tuple):
        header, _ = ours
        assert "kid" in header and not isinstance(header["kid"], str)
