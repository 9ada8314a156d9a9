"""Files a plugin reads at load and follows as they change: keys, secrets, maps.

Change is noticed the way the config file's is (asm_proxy.reload.fingerprint: the resolved
path, inode, mtime and size, so a Kubernetes Secret's `..data` symlink swap counts), and
confirmed by the content's hash. A new file that does not parse is refused with a log
line saying why; the previous good content stays in use. Exported by asm_proxy.api.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from asm_proxy.reload import Fingerprint, fingerprint

T = TypeVar("T")

#: Such files are small; anything larger is refused rather than read into memory.
MAX_SECRET_FILE_BYTES = 4 * 1024 * 1024


def read_secret_file(path: Path) -> bytes:
    """The file's bytes; ValueError (with the reason) if it cannot be read or is too big."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{str(path)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    return data


class WatchedFile(Generic[T]):
    """A parsed file; `value` is always the last content that parsed. `parse` raises
    ValueError to refuse a content; `what` names the file in messages ("API key file")."""

    def __init__(
        self, path: str | Path, parse: Callable[[bytes], T], what: str, log: logging.Logger
    ) -> None:
        self.path = Path(path)
        self.what = what
        self._parse = parse
        self._log = log
        self._fingerprint: Fingerprint | None = fingerprint(self.path)
        data = read_secret_file(self.path)
        try:
            self.value: T = parse(data)
        except ValueError as exc:
            raise ValueError(f"{what} {str(self.path)!r}: {exc}") from None
        self._hash = hashlib.sha256(data).digest()
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._missing_logged = False

    def check(self) -> bool:
        """Reload if the file changed; True if a new value is now in use."""
        current = fingerprint(self.path)
        if current is None:
            if not self._missing_logged:
                self._missing_logged = True
                self._log.warning(
                    "%s %s is gone; keeping the previous content", self.what, self.path
                )
            return False
        self._missing_logged = False
        if current == self._fingerprint:
            return False
        self._fingerprint = current
        try:
            data = read_secret_file(self.path)
        except ValueError as exc:
            return self._refuse(str(exc))
        digest = hashlib.sha256(data).digest()
        if digest == self._hash:
            return False
        self._hash = digest
        try:
            value = self._parse(data)
        except ValueError as exc:
            return self._refuse(str(exc))
        self.value = value
        self.reloads += 1
        self.last_error = None
        self._log.info("%s %s reloaded", self.what, self.path)
        return True

    def _refuse(self, reason: str) -> bool:
        self.failures += 1
        self.last_error = reason
        self._log.error(
            "%s %s refused, keeping the previous content: %s", self.what, self.path, reason
        )
        return False


class FilesWatcher:
    """Polls a plugin's watched files every `interval` seconds (one task for all of them):
    `start()` in the plugin's `start()`, `await stop()` in its `close()`."""

    def __init__(self, files: list[WatchedFile[Any]], interval: float) -> None:
        self.files = files
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def check_all(self) -> None:
        for f in self.files:
            f.check()

    def start(self) -> None:
        if self.files and self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check_all()
            except Exception:  # a bug here must not end the watching
                logging.getLogger("asm_proxy.files").exception("checking watched files failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
