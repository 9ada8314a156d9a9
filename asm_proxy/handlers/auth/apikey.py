"""API keys: looked up by their SHA-256, compared in constant time, never stored in clear.

The key file (a mounted Secret) is YAML or JSON:

    keys:
      - {consumer: billing-batch, sha256: 5e88489...}   # printf %s "$KEY" | sha256sum

Every stored hash is compared (hmac.compare_digest, no early exit), so the time taken does
not depend on which key, if any, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import yaml
from pydantic import ValidationError

from asm_proxy.handlers.auth.config import ApiKeyConfig, ApiKeyEntry
from asm_proxy.handlers.auth.identity import Failure, Identity
from asm_proxy.handlers.auth.secrets import WatchedFile
from asm_proxy.handlers.auth.sources import Found

Table = tuple[tuple[bytes, str], ...]


def _table(entries: list[ApiKeyEntry]) -> Table:
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
    return _table(entries)


UNKNOWN = Failure("apiKey", "api_key_unknown", "the API key is not valid")


class ApiKeys:
    def __init__(self, config: ApiKeyConfig, log: logging.Logger) -> None:
        self.config = config
        self._inline = _table(list(config.keys))
        self.file: WatchedFile[Table] | None = None
        if config.file is not None:
            self.file = WatchedFile(config.file, parse_key_file, "API key file", log)

    @property
    def table(self) -> Table:
        return self._inline + (self.file.value if self.file is not None else ())

    def check(self, found: Found) -> Identity | Failure:
        key = found.value.encode("utf-8", "surrogateescape")
        if not key or len(key) > self.config.max_key_bytes:
            return UNKNOWN
        digest = hashlib.sha256(key).digest()
        consumer: str | None = None
        for stored, name in self.table:
            if hmac.compare_digest(stored, digest):
                consumer = name
        if consumer is None:
            return UNKNOWN
        return Identity(kind="apiKey", consumer=consumer, found=found)
