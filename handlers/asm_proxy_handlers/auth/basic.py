"""HTTP Basic authentication (RFC 7617) against an htpasswd file of bcrypt hashes.

Only bcrypt (`$2a$`, `$2b$`, `$2y$`, as `htpasswd -B -C 10` writes) at or above the
configured cost is accepted; plain-text passwords and the weak htpasswd formats (MD5
`$apr1$`, `{SHA}`, DES crypt, MD5/SHA crypt) make the whole file refused. bcrypt runs
in a thread (it releases the GIL), a few at a time; an unknown user costs as much as a
known one, so timing does not tell which users exist. A successful check is remembered
(keyed by an HMAC with a per-process random key, never the password) for `cacheTtl`.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import logging
import os
import time

import bcrypt

from asm_proxy.api import WatchedFile
from asm_proxy_handlers.auth.config import BasicConfig
from asm_proxy_handlers.auth.identity import Failure, Identity
from asm_proxy_handlers.auth.keyfiles import Users, parse_htpasswd
from asm_proxy_handlers.auth.sources import Found, Source

SOURCE = Source(header="authorization", prefix="Basic ")
#: bcrypt uses at most 72 bytes of a password; longer ones are refused, not truncated.
MAX_PASSWORD_BYTES = 72
_CACHE_MAX = 10_000


MALFORMED = Failure("basic", "basic_malformed", "malformed Basic credentials")
BAD = Failure("basic", "basic_bad_credentials", "wrong user name or password")


def decode_credentials(value: str) -> tuple[str, str] | None:
    """(user, password) from the base64 part of `Authorization: Basic ...`, or None."""
    try:
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        return None
    return user, password


class BasicAuth:
    def __init__(self, config: BasicConfig, log: logging.Logger) -> None:
        self.config = config
        self.file: WatchedFile[Users] = WatchedFile(
            config.htpasswd_file,
            lambda data: parse_htpasswd(data, config.min_cost),
            "htpasswd file",
            log,
        )
        self._cache_key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self._dummy: bytes | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.bcrypt_checks = 0

    def _remembered(self, user: str, password: bytes, stored: bytes) -> bytes:
        message = user.encode() + b"\0" + password + b"\0" + stored
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    async def _bcrypt(self, password: bytes, stored: bytes) -> bool:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrent_checks)
        async with self._semaphore:
            self.bcrypt_checks += 1
            return await asyncio.to_thread(bcrypt.checkpw, password, stored)

    async def _dummy_hash(self) -> bytes:
        """A hash of the configured cost, for unknown users (made once, off the loop)."""
        if self._dummy is None:
            salt = bcrypt.gensalt(self.config.min_cost)
            password = os.urandom(16).hex().encode()
            self._dummy = await asyncio.to_thread(bcrypt.hashpw, password, salt)
        return self._dummy

    async def check(self, found: Found) -> Identity | Failure:
        pair = decode_credentials(found.value)
        if pair is None:
            return MALFORMED
        user, text = pair
        password = text.encode("utf-8")
        if len(password) > MAX_PASSWORD_BYTES:
            return BAD
        stored = self.file.value.get(user)
        if stored is None:
            await self._bcrypt(password, await self._dummy_hash())  # same cost as a known user
            return BAD
        key = self._remembered(user, password, stored)
        now = time.monotonic()
        expiry = self._cache.get(key)
        if expiry is not None and expiry > now:
            return Identity(kind="basic", consumer=user, found=found)
        if not await self._bcrypt(password, stored):
            return BAD
        if len(self._cache) >= _CACHE_MAX:
            self._cache = {k: t for k, t in self._cache.items() if t > now}
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
        if self.config.cache_ttl > 0:
            self._cache[key] = now + self.config.cache_ttl
        return Identity(kind="basic", consumer=user, found=found)
