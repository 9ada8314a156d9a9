"""Saying what went wrong on a stream without letting a flood of bad streams flood the log.

Two kinds, told apart because they call for different people:

- a **client's fault** (bytes that are not a ProcessingRequest or CheckRequest, messages out
  of order): the client gets INVALID_ARGUMENT or FAILED_PRECONDITION with the reason, and the
  log a WARNING line without a traceback (there is nothing in asm-proxy to debug);
- **asm-proxy's own fault** (an exception escaping the stream code): INTERNAL for the client,
  an ERROR with the traceback for whoever maintains asm-proxy.

Either way at most `BURST` lines per `PERIOD` seconds for each kind; the rest are counted
and summed up in one line ("N more ... suppressed") at the end of the period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType

log = logging.getLogger("asm_proxy.server")

#: Lines of one kind written per period before the rest are only counted.
BURST = 5
PERIOD = 10.0

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class Throttle:
    """Lets `burst` records of a kind through per `period`, counts the others, and writes
    one summary line for them when the period ends."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        *,
        burst: int = BURST,
        period: float = PERIOD,
    ) -> None:
        self.logger = logger
        self.level = level
        self.what = what  # "client faults", in "12 more client faults ... suppressed"
        self.burst = burst
        self.period = period
        self._window = -float("inf")
        self._written = 0
        self._suppressed = 0
        self._flush: asyncio.TimerHandle | None = None

    def log(self, msg: str, *args: object, exc_info: ExcInfo | None = None) -> None:
        now = time.monotonic()
        if now - self._window >= self.period:
            self.flush()
            self._window, self._written = now, 0
        if self._written < self.burst:
            self._written += 1
            self.logger.log(self.level, msg, *args, exc_info=exc_info)
            return
        self._suppressed += 1
        if self._flush is None:
            # Say how many were held back even if the flood stops now.
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(self._window + self.period - now, self.flush)

    def flush(self) -> None:
        """Write the summary of the records held back so far (if any)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._suppressed:
            self.logger.log(
                self.level,
                "%d more %s in the last %.0fs (suppressed; %d a period are written)",
                self._suppressed,
                self.what,
                self.period,
                self.burst,
            )
            self._suppressed = 0


client = Throttle(log, logging.WARNING, "client faults")
internal = Throttle(log, logging.ERROR, "internal errors")


def client_fault(where: str, reason: str, peer: str) -> None:
    """A client broke the protocol: WARNING, no traceback, throttled."""
    client.log("%s refused (client's fault, from %s): %s", where, peer, reason)


def internal_fault(where: str, exc: BaseException) -> None:
    """asm-proxy failed: ERROR with the traceback, throttled."""
    internal.log("%s failed inside asm-proxy", where, exc_info=(type(exc), exc, exc.__traceback__))
