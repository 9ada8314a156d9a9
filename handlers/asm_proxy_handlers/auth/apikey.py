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

from asm_proxy.api import WatchedFile
from asm_proxy_handlers.auth.config import ApiKeyConfig
from asm_proxy_handlers.auth.identity import Failure, Identity
from asm_proxy_handlers.auth.keyfiles import Table, parse_key_file, table_of
from asm_proxy_handlers.auth.sources import Found

UNKNOWN = Failure("apiKey", "api_key_unknown", "the API key is not valid")


class ApiKeys:
    def __init__(self, config: ApiKeyConfig, log: logging.Logger) -> None:
        self.config = config
        self._inline = table_of(list(config.keys))
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
