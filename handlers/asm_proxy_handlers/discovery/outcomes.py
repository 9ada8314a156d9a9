"""What became of each registry answer: counted on the plugin, logged now and then.

Plugin-declared metrics do not exist yet; `counts` is a plain Counter on the plugin so the
figures can move to them later without changing what is counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

#: Outcomes that are normal traffic, logged at INFO rather than WARNING.
QUIET = frozenset({"status", "no_instances", "unchanged"})
#: At most one log line per reason this often (seconds).
LOG_EVERY = 10.0


class Outcomes:
    """Counts by outcome (`rewritten`, `instances_rewritten`, one per reason an answer
    passed unchanged) and a log line per reason at most every LOG_EVERY seconds."""

    __slots__ = ("_last", "counts", "registry")

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def rewritten(self, instances: int) -> None:
        self.counts["rewritten"] += 1
        self.counts["instances_rewritten"] += instances

    def passed(self, log: logging.Logger, reason: str, detail: str) -> None:
        """An answer went on unchanged: count it; say why (rate-limited per reason)."""
        counts = self.counts
        counts[reason] += 1
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < LOG_EVERY:
            return
        self._last[reason] = now
        level = logging.INFO if reason in QUIET else logging.WARNING
        log.log(
            level,
            "%s %s: answer passed through unchanged (%s; %d so far)",
            self.registry,
            reason,
            detail,
            counts[reason],
        )
