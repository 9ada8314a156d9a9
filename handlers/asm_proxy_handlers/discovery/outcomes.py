"""What became of each registry answer: counted in the plugin's metrics, logged now and then.

Every registry plugin declares the same two metrics, so one dashboard panel covers them
all (`type` tells them apart):

    asm_proxy_plugin_discovery_answers_total{plugin, type, outcome}
        answers (HTTP bodies, gRPC messages) by outcome: `rewritten`, or why they went on
        unchanged (`unchanged`, `no_instances`, `incomplete`, `malformed`, ...)
    asm_proxy_plugin_discovery_instances_rewritten_total{plugin, type}
        instance addresses rewritten to service host names
"""

from __future__ import annotations

import logging
import time

from asm_proxy.api import CounterChild, Http, Plugin, Response

#: Outcomes that are normal traffic, logged at INFO rather than WARNING.
QUIET = frozenset({"status", "no_instances", "unchanged"})
#: At most one log line per reason this often (seconds).
LOG_EVERY = 10.0


def unusable(response: Response) -> tuple[str, str] | None:
    """Why a registry's answer cannot be rewritten, as (outcome, detail): not a 200, or
    compressed (the plugins read it as sent, and ask for it uncompressed); None if it can."""
    status = response.status
    if status != 200:
        return "status", f"status {status}"
    encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        return "encoded", f"content-encoding {encoding}"
    return None


class Outcomes:
    """Counts by outcome and a log line per reason at most every LOG_EVERY seconds."""

    __slots__ = ("_by_outcome", "_last", "_rewritten", "answers", "instances", "registry")

    def __init__(self, plugin: Plugin, registry: str) -> None:
        self.registry = registry
        self.answers = plugin.counter(
            "discovery_answers_total",
            "Registry answers (HTTP bodies, gRPC messages) by outcome: rewritten, or why "
            "they went on unchanged",
            labels=["outcome"],
        )
        self.instances = plugin.counter(
            "discovery_instances_rewritten_total",
            "Instance addresses in registry answers rewritten to service host names",
        )
        self._rewritten = self.answers.labels("rewritten")
        self._by_outcome: dict[str, CounterChild] = {}
        self._last: dict[str, float] = {}

    def count(self, outcome: str) -> None:
        """An answer went on with this outcome (and nothing to say about it)."""
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self.answers.labels(outcome)
        child.inc()

    def rewritten(self, instances: int) -> None:
        self._rewritten.inc()
        self.instances.inc(instances)

    def passed(self, log: logging.Logger, reason: str, detail: str) -> None:
        """An answer went on unchanged: count it; say why (rate-limited per reason)."""
        self.count(reason)
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
            self._by_outcome[reason].value,
        )

    def pass_through(self, http: Http, log: logging.Logger, reason: str, detail: str) -> None:
        """Leave this answer alone: its result in the exchange's metadata (under the
        registry's name), nothing more asked of Envoy, counted, and said why."""
        http.set_metadata(self.registry, {"result": reason})
        http.done()
        self.passed(log, reason, detail)
