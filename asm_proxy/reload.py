"""Noticing that the config file changed, and handing over only a whole, settled file.

A mounted ConfigMap is `config.yaml -> ..data/config.yaml`, and an update swaps the `..data`
symlink to a new timestamped directory in one rename. Watching the path's resolved target,
inode, mtime and size catches that swap as well as an in-place edit; the content hash then
decides whether anything really changed.

An in-place edit is not atomic: an editor or `cat > file` truncates the file and writes it
in pieces, and a poll can land in between, on an empty file or on half of one (which may
even parse: the first plugins of a list without the `auth` one after them). So a change is
acted on only once the file has stood still for `settle` seconds (the same fingerprint and
content hash before and after), and the callback gets exactly the bytes that were checked,
never a second read. A file that keeps changing is left for the next poll.

A file that cannot be used at all (deleted, replaced by a directory, unreadable) changes
nothing: the running chain stays. That is said at WARNING once when it happens (and again
if the reason changes), once when the file is usable again, and kept in `stats.counters`
(`config_file_unusable` is 1 meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from asm_proxy.config import ConfigError, read_config_bytes
from asm_proxy.stats import counters

log = logging.getLogger("asm_proxy.reload")

Fingerprint = tuple[str, int, int, int]

#: How long a changed file must stand still before it is read as the new config.
SETTLE = 0.25
#: Checks of a changing file per poll before it is left for the next poll.
SETTLE_TRIES = 8


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_mtime_ns, st.st_size)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused(log: logging.Logger, path: object, exc: ConfigError) -> bool:
    """A reload refused: counted, each problem logged under `log` (the server's or the
    supervisor's); False, for the reload to return. The running config stays."""
    counters.config_reload_failures += 1
    log.error(
        "config %s refused; the running chain stays:\n%s",
        path,
        "\n".join(f"  {p}" for p in exc.problems),
    )
    return False


class _Unusable(Exception):
    """The file cannot be read as a config at all (the reason is the message)."""


class ConfigWatcher:
    """Polls `path` every `interval` seconds; when its content has changed and settled,
    awaits `on_change(data)` with the new bytes. `initial` is the content already running
    (so a change made between loading it and starting the watcher is not missed)."""

    def __init__(
        self,
        path: str | Path,
        interval: float,
        on_change: Callable[[bytes], Awaitable[object]],
        *,
        initial: bytes | None = None,
        settle: float = SETTLE,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.settle = settle
        self._on_change = on_change
        # None: the first poll compares the content itself, so a change made between
        # loading `initial` and starting the watcher is not mistaken for "no change".
        self._fingerprint: Fingerprint | None = None
        if initial is None:
            with contextlib.suppress(ConfigError):
                initial = read_config_bytes(self.path)
        self._hash = _digest(initial) if initial is not None else None
        self._unusable: str | None = None
        self._wake = asyncio.Event()

    @property
    def unusable(self) -> str | None:
        """Why the file cannot be used right now, or None."""
        return self._unusable

    def poke(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("config reload failed")

    async def check(self) -> bool:
        """Look once; True if `on_change` was called."""
        data = await self.changed()
        if data is None:
            return False
        await self._on_change(data)
        return True

    async def changed(self) -> bytes | None:
        """The new content if the file changed and has settled, else None."""
        seen = fingerprint(self.path)  # before reading: a later write changes it
        try:
            data = self._read()
        except _Unusable as exc:
            self._set_unusable(str(exc))
            return None
        self._set_unusable(None)
        if seen is not None and seen == self._fingerprint:
            return None
        settled = await self._settle(seen, data)
        if settled is None:
            return None
        data, self._fingerprint = settled
        digest = _digest(data)
        if digest == self._hash:
            return None
        self._hash = digest
        return data

    async def _settle(
        self, seen: Fingerprint | None, data: bytes
    ) -> tuple[bytes, Fingerprint | None] | None:
        """Wait until two looks `settle` seconds apart agree; None if the file kept
        changing (or went away) meanwhile."""
        before = (seen, _digest(data))
        for _ in range(SETTLE_TRIES):
            await asyncio.sleep(self.settle)
            seen = fingerprint(self.path)
            try:
                again = self._read()
            except _Unusable as exc:
                self._set_unusable(str(exc))
                return None
            now = (seen, _digest(again))
            if now == before:
                return again, seen
            before = now
        counters.config_file_unsettled += 1
        log.warning(
            "config %s is still changing after %.1fs; the running chain stays, checking again",
            self.path,
            self.settle * SETTLE_TRIES,
        )
        return None

    def _read(self) -> bytes:
        try:
            return read_config_bytes(self.path)
        except ConfigError as exc:
            raise _Unusable("; ".join(p.message for p in exc.problems)) from None

    def _set_unusable(self, reason: str | None) -> None:
        if reason == self._unusable:
            return
        if reason is None:
            log.warning("config %s is usable again", self.path)
            counters.config_file_unusable = 0
        else:
            log.warning("config %s cannot be used (%s); the running chain stays", self.path, reason)
            counters.config_file_unusable = 1
            counters.config_file_unusable_events += 1
            # Whatever appears there next is read and compared afresh.
            self._fingerprint = None
        self._unusable = reason
