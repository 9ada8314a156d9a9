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
import re
import time

import bcrypt

from asm_proxy.handlers.auth.config import BasicConfig
from asm_proxy.handlers.auth.identity import Failure, Identity
from asm_proxy.handlers.auth.secrets import WatchedFile
from asm_proxy.handlers.auth.sources import Found, Source

SOURCE = Source(header="authorization", prefix="Basic ")
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_DES = re.compile(r"^[./0-9A-Za-z]{13}$")
_WEAK = (
    ("$apr1$", "an MD5 (apr1) hash"),
    ("{SHA}", "a SHA-1 hash"),
    ("$1$", "an MD5-crypt hash"),
    ("$5$", "a SHA-256-crypt hash"),
    ("$6$", "a SHA-512-crypt hash"),
    ("$argon2", "an argon2 hash (not supported here)"),
)
#: bcrypt uses at most 72 bytes of a password; longer ones are refused, not truncated.
MAX_PASSWORD_BYTES = 72
_CACHE_MAX = 10_000

Users = dict[str, bytes]


def parse_htpasswd(data: bytes, min_cost: int) -> Users:
    """user -> bcrypt hash; ValueError naming the line (never the hash) of any weak entry."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    users: Users = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        where = f"line {number}"
        if not sep or not user or not stored:
            raise ValueError(f"{where}: expected user:hash")
        where += f" (user {user!r})"
        if user in users:
            raise ValueError(f"{where}: the user is listed twice")
        m = _BCRYPT.match(stored)
        if m is None:
            for prefix, what in _WEAK:
                if stored.startswith(prefix):
                    raise ValueError(f"{where}: {what}; use bcrypt (htpasswd -B -C 10)")
            if _DES.match(stored):
                raise ValueError(f"{where}: a DES crypt hash; use bcrypt (htpasswd -B -C 10)")
            raise ValueError(
                f"{where}: a plain-text password or unknown hash; use bcrypt (htpasswd -B -C 10)"
            )
        cost = int(m.group(1))
        if cost < min_cost:
            raise ValueError(
                f"{where}: bcrypt cost {cost} is below minCost {min_cost} "
                f"(htpasswd -B -C {min_cost})"
            )
        users[user] = stored.encode("ascii")
    if not users:
        raise ValueError("no users")
    return users


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
