"""The formats of auth's secrets files: API key files and htpasswd files.

Parsed at load (so `validate` reports a bad file at its field) and again whenever a watched
file changes; a ValueError says what is wrong without ever quoting a secret. Kept apart
from `config` and from the checkers that use them, so that neither imports the other.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError, field_validator, model_validator

from asm_proxy.api import Headers, PluginConfig

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _header_value(value: str) -> None:
    Headers().set("x-probe", value)  # raises ValueError naming a forbidden character


class ApiKeyEntry(PluginConfig):
    consumer: str
    #: The key's SHA-256, as 64 lower-case hex digits (`printf %s "$KEY" | sha256sum`).
    sha256: str

    @model_validator(mode="before")
    @classmethod
    def _no_clear_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("key" in data or "value" in data):
            raise ValueError(
                "API keys are stored hashed: give sha256 (printf %s KEY | sha256sum), "
                "never the key itself"
            )
        return data

    @field_validator("consumer")
    @classmethod
    def _consumer(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("consumer must not be empty")
        _header_value(value)
        return value

    @field_validator("sha256")
    @classmethod
    def _hash(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_HEX.match(value):
            raise ValueError("sha256 must be 64 hex digits (the SHA-256 of the key)")
        return value


Table = tuple[tuple[bytes, str], ...]


def table_of(entries: list[ApiKeyEntry]) -> Table:
    seen: dict[str, str] = {}
    for entry in entries:
        other = seen.get(entry.sha256)
        if other is not None and other != entry.consumer:
            raise ValueError(f"one key hash is given to both {other!r} and {entry.consumer!r}")
        seen[entry.sha256] = entry.consumer
    return tuple((bytes.fromhex(digest), consumer) for digest, consumer in seen.items())


def parse_key_file(data: bytes) -> Table:
    """The (digest, consumer) table of a key file; ValueError saying what is wrong."""
    try:
        doc: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML/JSON: {str(exc).splitlines()[0]}") from None
    except (ValueError, RecursionError):
        raise ValueError("not YAML/JSON text") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('expected a mapping with a "keys" list')
    entries = []
    for i, raw in enumerate(doc["keys"]):
        try:
            entries.append(ApiKeyEntry.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"keys[{i}]{'.' + where if where else ''}: {msg}") from None
    return table_of(entries)


Users = dict[str, bytes]

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
