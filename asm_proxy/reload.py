"""Noticing that the config file changed, including a Kubernetes ConfigMap's symlink swap.

A mounted ConfigMap is `config.yaml -> ..data/config.yaml`, and an update swaps the `..data`
symlink to a new timestamped directory in one rename. Watching the path's resolved target,
inode, mtime and size catches that swap as well as an in-place edit; the content hash then
decides whether anything really changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("asm_proxy.reload")

Fingerprint = tuple[str, int, int, int]


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_mtime_ns, st.st_size)


def content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Polls `path` every `interval` seconds and awaits `on_change()` when its content changes."""

    def __init__(
        self, path: str | Path, interval: float, on_change: Callable[[], Awaitable[object]]
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._on_change = on_change
        self._fingerprint = fingerprint(self.path)
        self._hash = content_hash(self.path)
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    def changed(self) -> bool:
        current = fingerprint(self.path)
        if current is None or current == self._fingerprint:
            return False
        self._fingerprint = current
        digest = content_hash(self.path)
        if digest is None or digest == self._hash:
            return False
        self._hash = digest
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                if self.changed():
                    await self._on_change()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("config reload failed")
