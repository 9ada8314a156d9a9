"""JWT providers: find the token, check it with PyJWT against the provider's keys, and say
exactly why a token is refused.

Checks, in order: size; compact JWS shape with base64url segments; `alg` (never `none`,
only the provider's algorithms); the key by `kid` (an unknown kid makes a remote JWKS be
fetched again, at a bounded rate); then PyJWT verifies the signature with that key bound
to that algorithm, and `exp`, `nbf`, `iat`, `iss`, `aud` with the configured clock skew.
An HMAC provider verifies only with its secret file; a public-key provider only with JWKS
keys of the matching type, so an HS256 token can never be checked against an RSA key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Any

import jwt as pyjwt
from jwt import PyJWK

from asm_proxy.api import WatchedFile
from asm_proxy_handlers.auth.config import JwtProvider
from asm_proxy_handlers.auth.identity import Failure, Identity, claim_at
from asm_proxy_handlers.auth.jwks import (
    HMAC_ALGS,
    KeySet,
    RemoteJwks,
    parse_hmac_secret,
    parse_jwks,
)
from asm_proxy_handlers.auth.sources import Found

_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

# PyJWT's errors, most specific first (InvalidSignatureError is a DecodeError).
_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (pyjwt.ExpiredSignatureError, "jwt_expired", "the token has expired"),
    (pyjwt.ImmatureSignatureError, "jwt_not_yet_valid", "the token is not valid yet"),
    (pyjwt.InvalidAudienceError, "jwt_wrong_audience", "the token is for another audience"),
    (pyjwt.InvalidIssuerError, "jwt_wrong_issuer", "the token's issuer is not accepted"),
    (pyjwt.MissingRequiredClaimError, "jwt_missing_claim", "the token lacks a required claim"),
    (pyjwt.InvalidSignatureError, "jwt_bad_signature", "the token's signature does not verify"),
    (pyjwt.InvalidAlgorithmError, "jwt_alg_not_allowed", "the token's algorithm is not accepted"),
    (pyjwt.InvalidKeyError, "jwt_bad_key", "the token cannot be verified"),
    (pyjwt.InvalidIssuedAtError, "jwt_malformed", "the token is malformed"),
    (pyjwt.DecodeError, "jwt_malformed", "the token is malformed"),
    (pyjwt.InvalidTokenError, "jwt_invalid", "the token is not valid"),
)


def _failure(reason: str, description: str) -> Failure:
    return Failure("jwt", reason, description)


MALFORMED = _failure("jwt_malformed", "the token is malformed")
BAD_SIGNATURE = _failure("jwt_bad_signature", "the token's signature does not verify")


def _segment(segment: str) -> bytes | None:
    """A base64url segment's bytes; None unless it is the canonical encoding of them (as
    PyJWT requires). The caller has checked the alphabet."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if base64.urlsafe_b64encode(data).rstrip(b"=") == segment.encode() else None


def _json_segment(segment: str) -> dict[str, Any] | None:
    """A base64url JSON object, or None."""
    data = _segment(segment)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]] | Failure:
    """Header and payload WITHOUT verification: only to choose the provider and the key.

    Decoded here rather than by PyJWT, which checks every segment character by character
    in Python on each call: the one verifying `decode` afterwards is enough (measured:
    the two unverified PyJWT parses were ~8 % of a worker's time under JWT load).
    """
    if not _COMPACT_JWS.match(token):
        return MALFORMED
    head, body, signature = token.split(".")
    header = _json_segment(head)
    payload = _json_segment(body)
    if header is None or payload is None or _segment(signature) is None:
        return MALFORMED
    return header, payload


class Provider:
    """One configured issuer, ready to verify its tokens."""

    def __init__(self, config: JwtProvider, log: logging.Logger) -> None:
        self.config = config
        self.name = config.name
        self.log = log
        self.algorithms = frozenset(config.algorithms)
        self.audiences = list(config.audiences)
        self.hmac = bool(self.algorithms & HMAC_ALGS.keys())
        self.remote: RemoteJwks | None = None
        self._static: KeySet | None = None
        self.jwks_file: WatchedFile[KeySet] | None = None
        self.secret_file: WatchedFile[bytes] | None = None
        #: token -> (the key set or secret it was verified with, its claims)
        self._verified: OrderedDict[str, tuple[object, dict[str, Any]]] = OrderedDict()
        self._options: Any = {
            "require": ["exp", "iss", "aud"] if config.require_exp else ["iss", "aud"],
            "enforce_minimum_key_length": True,
        }
        if self.hmac:
            assert config.hmac_secret_file is not None
            self.secret_file = WatchedFile(
                config.hmac_secret_file,
                lambda data: parse_hmac_secret(data, self.algorithms),
                f"jwt provider {self.name} secret",
                log,
            )
        elif config.jwks is not None:
            try:
                self._static = parse_jwks(config.jwks, self.algorithms)
            except ValueError as exc:
                raise ValueError(f"jwt provider {self.name}: jwks: {exc}") from None
        elif config.jwks_file is not None:
            self.jwks_file = WatchedFile(
                config.jwks_file,
                lambda data: parse_jwks(data, self.algorithms),
                f"jwt provider {self.name} JWKS file",
                log,
            )
        else:
            assert config.jwks_uri is not None
            self.remote = RemoteJwks(
                config.jwks_uri,
                self.algorithms,
                refresh_interval=config.refresh_interval,
                min_refetch_interval=config.min_refetch_interval,
                fetch_timeout=config.fetch_timeout,
                max_bytes=config.max_jwks_bytes,
                log=log,
            )

    def watched(self) -> list[WatchedFile[Any]]:
        return [f for f in (self.jwks_file, self.secret_file) if f is not None]

    async def start(self) -> None:
        if self.remote is not None:
            await self.remote.start()

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()

    @property
    def keys(self) -> KeySet | None:
        if self._static is not None:
            return self._static
        if self.jwks_file is not None:
            return self.jwks_file.value
        return self.remote.keys if self.remote is not None else None

    async def _candidates(self, kid: str | None, alg: str) -> list[PyJWK | bytes] | Failure:
        if self.secret_file is not None:
            return [self.secret_file.value]
        keys = self.keys
        found: list[PyJWK | bytes] = list(keys.candidates(kid, alg)) if keys else []
        if (
            not found
            and self.remote is not None
            and await self.remote.refetch_for_unknown_kid(self.config.key_fetch_wait, kid)
        ):
            keys = self.keys
            found = list(keys.candidates(kid, alg)) if keys else []
        if found:
            return found
        if keys is None:
            return _failure("jwks_unavailable", "the signing keys are not available")
        if kid is not None:
            return _failure("jwt_unknown_kid", "the token's key is not known")
        return _failure("jwt_no_key", "no key fits the token")

    def _key_source(self) -> object:
        """What a verification depended on: replaced, never mutated, when keys change."""
        return self.secret_file.value if self.secret_file is not None else self.keys

    def _recall(self, token: str) -> dict[str, Any] | None:
        """The claims of `token` if it was verified with the keys in use and has not expired."""
        entry = self._verified.get(token)
        if entry is None:
            return None
        source, claims = entry
        exp = claims.get("exp")
        expired = isinstance(exp, int | float) and time.time() >= exp + self.config.clock_skew
        if expired or source is not self._key_source():
            del self._verified[token]
            return None
        self._verified.move_to_end(token)
        return claims

    def _remember(self, token: str, source: object, claims: dict[str, Any]) -> None:
        if self.config.verified_cache_size == 0:
            return
        self._verified[token] = (source, claims)
        if len(self._verified) > self.config.verified_cache_size:
            self._verified.popitem(last=False)

    async def verify(self, found: Found, header: dict[str, Any]) -> Identity | Failure:
        """Verify a token whose unverified `iss` names this provider."""
        token = found.value
        remembered = self._recall(token)
        if remembered is not None:
            return self._identity(remembered, found)
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            return MALFORMED
        if alg.lower() == "none":
            return _failure("jwt_alg_none", "unsigned tokens are not accepted")
        if alg not in self.algorithms:
            return _failure("jwt_alg_not_allowed", "the token's algorithm is not accepted")
        candidates = await self._candidates(kid, alg)
        if isinstance(candidates, Failure):
            return candidates
        source = self._key_source()  # before any await could see it replaced
        failure: Failure | None = None
        for key in candidates:
            try:
                claims = pyjwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=self.audiences,
                    issuer=self.config.issuer,
                    leeway=self.config.clock_skew,
                    options=self._options,
                )
            except pyjwt.InvalidSignatureError:
                failure = BAD_SIGNATURE
                continue  # without a kid, the next key may be the one
            except (pyjwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
                return _map_error(exc)
            self._remember(token, source, claims)
            return self._identity(claims, found)
        return failure or BAD_SIGNATURE

    def _identity(self, claims: dict[str, Any], found: Found) -> Identity:
        consumer = claim_at(claims, self.config.consumer_claim)
        return Identity(
            kind="jwt",
            consumer=consumer if isinstance(consumer, str) else None,
            provider=self.name,
            claims=claims,
            found=found,
        )


def _map_error(exc: Exception) -> Failure:
    for cls, reason, description in _ERRORS:
        if isinstance(exc, cls):
            return _failure(reason, description)
    return MALFORMED
