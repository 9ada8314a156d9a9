"""JSON Web Key Sets (RFC 7517): parsed once into verification keys by `kid`, and kept
fresh from a URL.

Each JWK becomes one PyJWK per algorithm it may verify, and only algorithms the provider
allows and the key's type fits (RFC 8725 section 3.1): RS*/PS* need an RSA key of 2048
bits or more, ES256/384/512 an EC key on P-256/P-384/P-521, EdDSA an OKP key. A JWK's own
`alg` narrows that further. Symmetric (`oct`) keys and private keys are refused: an HMAC
secret comes only from the provider's `hmacSecretFile`, never from a key set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from jwt import PyJWK

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
OKP_ALGS = frozenset({"EdDSA"})
ASYMMETRIC_ALGS = RSA_ALGS | frozenset(EC_ALGS) | OKP_ALGS
#: HMAC algorithms and the smallest secret each accepts (RFC 7518 section 3.2).
HMAC_ALGS = {"HS256": 32, "HS384": 48, "HS512": 64}
ALL_ALGS = ASYMMETRIC_ALGS | frozenset(HMAC_ALGS)
MIN_RSA_BITS = 2048
#: Members that only a private (or symmetric) key has.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    kty = jwk.get("kty")
    if alg in RSA_ALGS:
        return kty == "RSA"
    if alg in EC_ALGS:
        return kty == "EC" and jwk.get("crv") == EC_ALGS[alg]
    if alg in OKP_ALGS:
        return kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448")
    return False


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public key, ready to verify each algorithm it may be used with."""

    kid: str | None
    by_alg: dict[str, PyJWK]


@dataclass(slots=True)
class KeySet:
    keys: list[VerifyKey]
    skipped: list[str] = field(default_factory=list)
    by_kid: dict[str, list[VerifyKey]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_kid = {}
        for key in self.keys:
            if key.kid is not None:
                self.by_kid.setdefault(key.kid, []).append(key)

    def candidates(self, kid: str | None, alg: str) -> list[PyJWK]:
        """Keys that may verify a token with this header: by kid if it names one, else every
        key of the set (as Envoy's jwt_authn does)."""
        pool: Iterable[VerifyKey] = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return [k.by_alg[alg] for k in pool if alg in k.by_alg]

    def kids(self) -> list[str]:
        return sorted(self.by_kid)


def _one_key(jwk: Any, allowed: frozenset[str], index: int) -> VerifyKey | str:
    """The key, or why it is skipped. Raises ValueError for a key that must never be here."""
    if not isinstance(jwk, dict):
        return f"keys[{index}] is not an object"
    kid = jwk.get("kid")
    where = f"keys[{index}]" + (f" (kid {kid!r})" if isinstance(kid, str) else "")
    if kid is not None and not isinstance(kid, str):
        return f"{where}: kid is not a string"
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError(f"{where} is a symmetric (oct) key; HMAC secrets belong in hmacSecretFile")
    private = [m for m in PRIVATE_MEMBERS if m in jwk]
    if private:
        raise ValueError(f"{where} has private key members {private}; publish public keys only")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"{where}: use is {use!r}, not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return f"{where}: key_ops does not include 'verify'"
    own_alg = jwk.get("alg")
    if own_alg is not None and not isinstance(own_alg, str):
        return f"{where}: alg is not a string"
    algs = [a for a in sorted(allowed) if _fits(jwk, a) and own_alg in (None, a)]
    if not algs:
        return f"{where}: kty {kty!r} / alg {own_alg!r} fits none of the allowed algorithms"
    by_alg: dict[str, PyJWK] = {}
    for alg in algs:
        try:
            key = PyJWK(jwk, algorithm=alg)
        except Exception as exc:  # PyJWT and cryptography raise many kinds for bad members
            return f"{where}: not a usable {kty} key ({type(exc).__name__}: {exc})"
        if kty == "RSA":
            bits = getattr(key.key, "key_size", 0)
            if bits < MIN_RSA_BITS:
                raise ValueError(f"{where} is a {bits}-bit RSA key; at least {MIN_RSA_BITS}")
        by_alg[alg] = key
    return VerifyKey(kid if isinstance(kid, str) else None, by_alg)


def parse_jwks(data: bytes | str | dict[str, Any], allowed: Iterable[str]) -> KeySet:
    """A KeySet of the usable keys; ValueError if there is none or the set is unsafe."""
    allowed_set = frozenset(allowed) & ASYMMETRIC_ALGS
    doc: Any = data
    if not isinstance(data, dict):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS: expected an object with a "keys" list')
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for index, jwk in enumerate(doc["keys"]):
        result = _one_key(jwk, allowed_set, index)
        if isinstance(result, str):
            skipped.append(result)
        else:
            keys.append(result)
    if not keys:
        why = "; ".join(skipped[:5]) if skipped else "the key set is empty"
        raise ValueError(f"no usable key for algorithms {sorted(allowed_set)}: {why}")
    return KeySet(keys, skipped)


def parse_hmac_secret(data: bytes, algorithms: Iterable[str]) -> bytes:
    """The secret of an HMAC provider's file (one trailing newline ignored); ValueError if it
    is shorter than the longest configured HS algorithm needs (RFC 7518 section 3.2)."""
    secret = data.removesuffix(b"\n").removesuffix(b"\r")
    need = max((HMAC_ALGS[a] for a in algorithms if a in HMAC_ALGS), default=32)
    if len(secret) < need:
        raise ValueError(
            f"the secret has {len(secret)} bytes; HS algorithms {sorted(algorithms)} need "
            f"at least {need} (RFC 7518 section 3.2)"
        )
    return secret


# --------------------------------------------------------------------------------------
# A key set fetched from a URL


class RemoteJwks:
    """A JWKS URL, fetched on start and every `refresh_interval`, and again when a token
    names a kid the set does not have (at most once every `min_refetch_interval`).

    Concurrent requests that need a fetch share one; a hook that times out while waiting
    does not cancel it. A failed fetch keeps the keys already known.
    """

    def __init__(
        self,
        uri: str,
        allowed: Iterable[str],
        *,
        refresh_interval: float,
        min_refetch_interval: float,
        fetch_timeout: float,
        max_bytes: int,
        log: logging.Logger,
    ) -> None:
        self.uri = uri
        self.allowed = frozenset(allowed)
        self.refresh_interval = refresh_interval
        self.min_refetch_interval = min_refetch_interval
        self.fetch_timeout = fetch_timeout
        self.max_bytes = max_bytes
        self.log = log
        self.keys: KeySet | None = None
        self.fetches = 0
        self.kid_refetches = 0
        self.fetch_failures = 0
        self.last_error: str | None = None
        self._last_kid_refetch = -1e18
        self._inflight: asyncio.Task[bool] | None = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.fetch_timeout, follow_redirects=False)
        # The first fetch is waited for (bounded), so serving starts with keys when the
        # issuer is reachable; an unreachable issuer does not stop asm-proxy starting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.refresh()), self.fetch_timeout)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            wait = self.refresh_interval if self.keys is not None else backoff
            await asyncio.sleep(wait)
            ok = await self.refresh()
            backoff = 1.0 if ok else min(backoff * 2, self.refresh_interval, 60.0)

    def refresh(self) -> asyncio.Future[bool]:
        """Fetch now (or join the fetch under way); the result says whether it succeeded."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return asyncio.shield(self._inflight)

    async def refetch_for_unknown_kid(self, wait: float, kid: str | None) -> bool:
        """Fetch again because a token named an unknown `kid`, unless such a fetch was
        made less than `min_refetch_interval` ago (periodic refreshes do not count: a key
        published just after one must not wait for the next); True if a fetch was made
        (or joined) and succeeded within `wait` seconds. A slower fetch goes on for the
        requests after this one.

        A fetch already under way is joined, but it may have read the set before the
        key was published: if it brings no `kid`, one fetch of our own follows."""
        deadline = time.monotonic() + wait
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            if not await _within(inflight, deadline):
                return False
            if kid is None or (self.keys is not None and kid in self.keys.by_kid):
                return True
        now = time.monotonic()
        if now - self._last_kid_refetch < self.min_refetch_interval:
            return False
        self._last_kid_refetch = now
        self.kid_refetches += 1
        return await _within(self.refresh(), deadline)

    async def _fetch(self) -> bool:
        client = self._client
        if client is None:
            return False
        self.fetches += 1
        try:
            async with client.stream("GET", self.uri, headers={"accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise ValueError(f"HTTP {r.status_code}")
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ValueError(f"larger than {self.max_bytes} bytes")
            keys = parse_jwks(bytes(body), self.allowed)
        except (httpx.HTTPError, ValueError) as exc:
            self.fetch_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.warning(
                "JWKS %s: fetch failed, keeping %s: %s",
                self.uri,
                "the keys already known" if self.keys else "no keys",
                self.last_error,
            )
            return False
        old = self.keys.kids() if self.keys else None
        self.keys = keys
        self.last_error = None
        if old != keys.kids():
            self.log.info("JWKS %s: now %d key(s), kids %s", self.uri, len(keys.keys), keys.kids())
        return True


async def _within(fetch: asyncio.Future[bool], deadline: float) -> bool:
    """The fetch's result if it ends by `deadline` (time.monotonic()), else False; the
    fetch goes on either way."""
    try:
        return await asyncio.wait_for(asyncio.shield(fetch), max(deadline - time.monotonic(), 0))
    except TimeoutError:
        return False
