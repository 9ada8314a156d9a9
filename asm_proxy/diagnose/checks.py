"""The checks of `asm-proxy diagnose`: mistakes in the config, and between the config and the
Envoy that calls asm-proxy, each with a severity and what to do about it.

Each check is a function of what it needs (the loaded config; with `envoy`, what the Envoy
config says) returning findings; `run` calls them all.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from asm_proxy.chain import Entry
from asm_proxy.diagnose.envoy_side import DEFAULT_BUFFER_LIMIT, EnvoySide
from asm_proxy.durations import parse_duration
from asm_proxy.events import Event
from asm_proxy.identity import Workload
from asm_proxy.loader import Loaded
from asm_proxy.namespaces import NAMESPACE_NAME
from asm_proxy.plugin import BodyAccess, FailStrategy
from asm_proxy.render.needs import IDENTITY_ATTRIBUTES, label_attribute

#: Envoy's message_timeout when the filter does not set one.
DEFAULT_MESSAGE_TIMEOUT = 0.2
_DNS_LABEL = NAMESPACE_NAME
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    plugin: str | None = None
    hint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.name.lower(),
            "plugin": self.plugin,
            "message": self.message,
            "hint": self.hint,
        }


Findings = Iterable[Finding]


# -- the config alone -------------------------------------------------------------------


def equal_priority(loaded: Loaded) -> Findings:
    """Two plugins of one phase with equal priority both handling an event: which runs first
    is decided by their order in the file, which nobody reading a priority expects."""
    for a, b in combinations(loaded.chain.entries, 2):
        shared = a.plugin.hooks & b.plugin.hooks
        if a.phase == b.phase and a.priority == b.priority and shared:
            yield Finding(
                "equal-priority",
                Severity.WARNING,
                f"{a.name!r} and {b.name!r} are both {a.phase.name} priority {a.priority} and "
                f"both handle {min(shared).hook}: they run in file order",
                plugin=b.name,
                hint="give the one that must run first a higher priority",
            )


def fail_open_access(loaded: Loaded) -> Findings:
    for entry in loaded.chain.entries:
        if entry.plugin.guards_access and entry.fail_strategy is FailStrategy.FAIL_OPEN:
            yield Finding(
                "fail-open-access",
                Severity.WARNING,
                f"{entry.name!r} ({entry.type_name}) decides who gets in, but is FAIL_OPEN: "
                "a failing or slow check lets the request through unchecked",
                plugin=entry.name,
                hint="failStrategy: FAIL_CLOSE",
            )


def timeout_over_deadline(loaded: Loaded) -> Findings:
    deadline = loaded.settings.deadline
    for entry in loaded.chain.entries:
        if entry.timeout is not None and entry.timeout > deadline:
            yield Finding(
                "timeout-over-deadline",
                Severity.WARNING,
                f"{entry.name!r} has timeout {entry.timeout * 1000:.0f}ms, but every message is "
                f"answered within deadline {deadline * 1000:.0f}ms: the hook is cut there",
                plugin=entry.name,
                hint="raise deadline (and Envoy's message_timeout above it) or lower the timeout",
            )


def _selector_flaws(entry: Entry) -> list[str]:
    selector = entry.selector
    if selector is None:
        return []
    flaws = [f"namespace {n!r}" for n in selector.namespaces if not _DNS_LABEL.match(n)]
    for key, value in selector.match_labels.items():
        if not _LABEL_KEY.match(key):
            flaws.append(f"label key {key!r}")
        if not _LABEL_VALUE.match(value):
            flaws.append(f"label value {value!r}")
    return flaws


def unsatisfiable_selector(loaded: Loaded) -> Findings:
    """A selector no Kubernetes workload can match: names Kubernetes does not allow."""
    for entry in loaded.chain.entries:
        flaws = _selector_flaws(entry)
        if flaws:
            yield Finding(
                "selector-matches-nothing",
                Severity.ERROR,
                f"{entry.name!r}'s selector can match no workload: "
                f"{', '.join(flaws)} cannot exist in Kubernetes",
                plugin=entry.name,
            )


# -- the config against Envoy's ---------------------------------------------------------


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, dict):  # {"seconds": 1, "nanos": 5e8}
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    return parse_duration(str(value).strip())


def no_filter(loaded: Loaded, envoy: EnvoySide) -> Findings:
    if not envoy.ext_proc and not envoy.ext_authz:
        yield Finding(
            "no-filter",
            Severity.ERROR,
            "the Envoy config has no ext_proc or ext_authz filter: asm-proxy is never called",
            hint="asm-proxy render prints the filters",
        )


def timeout_over_message_timeout(loaded: Loaded, envoy: EnvoySide) -> Findings:
    settings = loaded.settings
    for config in envoy.ext_proc:
        envoy_timeout = _seconds(config.get("message_timeout"), DEFAULT_MESSAGE_TIMEOUT)
        if settings.deadline >= envoy_timeout:
            yield Finding(
                "timeout-over-message-timeout",
                Severity.ERROR,
                f"asm-proxy may take up to deadline {settings.deadline * 1000:.0f}ms per "
                f"message, Envoy waits message_timeout {envoy_timeout * 1000:.0f}ms: a slow "
                "answer arrives after Envoy gave up",
                hint="message_timeout above deadline (asm-proxy render derives it)",
            )
        for entry in loaded.chain.entries:
            if entry.timeout is not None and entry.timeout >= envoy_timeout:
                yield Finding(
                    "timeout-over-message-timeout",
                    Severity.ERROR,
                    f"{entry.name!r} may take {entry.timeout * 1000:.0f}ms, Envoy waits "
                    f"{envoy_timeout * 1000:.0f}ms for an answer",
                    plugin=entry.name,
                    hint="message_timeout above the plugin's timeout",
                )


def _mode(config: dict[str, Any], field: str, default: str) -> str:
    return str(config.get("processing_mode", {}).get(field, default))


def missing_phases(loaded: Loaded, envoy: EnvoySide) -> Findings:
    """A plugin needs a phase Envoy does not send, and asm-proxy may not ask for it."""
    if not envoy.ext_proc:
        return
    for config in envoy.ext_proc:
        override = bool(config.get("allow_mode_override")) and loaded.settings.mode_override
        if override:
            continue
        for entry in loaded.chain.entries:
            plugin = entry.plugin
            wants = {
                "request_body_mode": plugin.body_access("request") is not BodyAccess.NONE,
                "response_body_mode": plugin.body_access("response") is not BodyAccess.NONE,
                "response_header_mode": any(not e.is_request for e in plugin.hooks),
                "request_trailer_mode": Event.REQUEST_TRAILERS in plugin.hooks,
                "response_trailer_mode": Event.RESPONSE_TRAILERS in plugin.hooks,
            }
            defaults = {
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "response_header_mode": "SEND",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            }
            for field, wanted in wants.items():
                sent = _mode(config, field, defaults[field])
                if wanted and sent in ("NONE", "SKIP"):
                    yield Finding(
                        "missing-phase",
                        Severity.ERROR,
                        f"{entry.name!r} needs {field.removesuffix('_mode')}, Envoy's "
                        f"processing_mode has {field}: {sent} and no allow_mode_override",
                        plugin=entry.name,
                        hint="allow_mode_override: true (asm-proxy asks per request)",
                    )


def metadata_not_received(loaded: Loaded, envoy: EnvoySide) -> Findings:
    wanted = {loaded.settings.metadata_namespace}
    for entry in loaded.chain.entries:
        wanted |= entry.plugin.metadata_namespaces
    for config in envoy.ext_proc:
        options = config.get("metadata_options", {}).get("receiving_namespaces", {})
        received = set(options.get("untyped", []))
        for namespace in sorted(wanted - received):
            yield Finding(
                "metadata-not-received",
                Severity.WARNING,
                f"plugins write dynamic metadata under {namespace!r}, which Envoy's ext_proc "
                "filter does not receive: the access log never sees it",
                hint=f"metadata_options.receiving_namespaces.untyped: [{namespace}]",
            )


def routing_not_allowed(loaded: Loaded, envoy: EnvoySide) -> Findings:
    for config in envoy.ext_proc:
        if config.get("mutation_rules", {}).get("allow_all_routing"):
            continue
        for entry in loaded.chain.entries:
            if entry.plugin.changes_routing:
                yield Finding(
                    "routing-not-allowed",
                    Severity.ERROR,
                    f"{entry.name!r} changes :authority/:path/host, which Envoy ignores "
                    "without mutation_rules.allow_all_routing",
                    plugin=entry.name,
                    hint="mutation_rules: {allow_all_routing: true}",
                )


def identity_not_sent(loaded: Loaded, envoy: EnvoySide) -> Findings:
    """Selectors need the workload's identity; Envoy must send the attributes it comes from."""
    for config in envoy.ext_proc:
        sent = set(config.get("request_attributes", []))
        for entry in loaded.chain.entries:
            selector = entry.selector
            if selector is None:
                continue
            missing = []
            if selector.namespaces and IDENTITY_ATTRIBUTES[0] not in sent:
                missing.append(IDENTITY_ATTRIBUTES[0])
            missing += [
                label_attribute(k) for k in selector.match_labels if label_attribute(k) not in sent
            ]
            if missing and not loaded.settings.proves_peers:
                yield Finding(
                    "identity-not-sent",
                    Severity.ERROR,
                    f"{entry.name!r} selects workloads, but Envoy does not send "
                    f"{', '.join(missing)}: the workload is unknown and the plugin never runs",
                    plugin=entry.name,
                    hint="add them to the ext_proc filter's request_attributes",
                )


def selector_misses_this_workload(loaded: Loaded, envoy: EnvoySide) -> Findings:
    """With one workload's Envoy (its node metadata), a selector that excludes it."""
    metadata = envoy.node_metadata
    if not metadata or "NAMESPACE" not in metadata:
        return
    labels = metadata.get("LABELS") if isinstance(metadata.get("LABELS"), dict) else {}
    workload = Workload(namespace=str(metadata["NAMESPACE"]), labels=labels or {})
    for entry in loaded.chain.entries:
        if entry.selects is not None and not entry.selects(workload):  # as serving selects
            yield Finding(
                "selector-matches-nothing",
                Severity.WARNING,
                f"{entry.name!r} never runs for this Envoy's workload (namespace "
                f"{workload.namespace!r}, labels {dict(workload.labels)}): its selector "
                "excludes it",
                plugin=entry.name,
            )


def buffer_limit(loaded: Loaded, envoy: EnvoySide) -> Findings:
    """Whole bodies larger than Envoy's buffer limit are refused by Envoy (413)."""
    limit = min(envoy.buffer_limits, default=DEFAULT_BUFFER_LIMIT)
    for entry in loaded.chain.entries:
        plugin = entry.plugin
        needs_whole = BodyAccess.WHOLE in (
            plugin.body_access("request"),
            plugin.body_access("response"),
        )
        if needs_whole and plugin.body_bytes > limit:
            yield Finding(
                "buffer-limit",
                Severity.WARNING,
                f"{entry.name!r} needs bodies of up to {plugin.body_bytes} bytes whole, but "
                f"Envoy buffers at most {limit} per connection: larger ones get 413",
                plugin=entry.name,
                hint="raise the listener's per_connection_buffer_limit_bytes",
            )


def no_health_checks(loaded: Loaded, envoy: EnvoySide) -> Findings:
    """Without gRPC health checks a draining asm-proxy keeps getting streams."""
    for config in [*envoy.ext_proc, *envoy.ext_authz]:
        cluster = envoy.cluster_of(config)
        if cluster is not None and not cluster.get("health_checks"):
            yield Finding(
                "no-health-checks",
                Severity.WARNING,
                f"cluster {cluster['name']!r} has no gRPC health checks: Envoy does not see "
                "asm-proxy draining and sends it streams it will refuse",
                hint="asm-proxy render adds health checks and outlier detection",
            )
            return


def failure_mode_allow(loaded: Loaded, envoy: EnvoySide) -> Findings:
    for config in envoy.ext_proc:
        if not config.get("failure_mode_allow"):
            continue
        closed = [e.name for e in loaded.chain.entries if not e.fail_open]
        if closed:
            yield Finding(
                "failure-mode-allow",
                Severity.WARNING,
                f"Envoy's failure_mode_allow skips asm-proxy when it is unreachable, so "
                f"FAIL_CLOSE plugins ({', '.join(closed)}) are skipped then too",
                hint="failure_mode_allow: false (render sets it only if all are FAIL_OPEN)",
            )


CONFIG_CHECKS: tuple[Callable[[Loaded], Iterable[Finding]], ...] = (
    equal_priority,
    fail_open_access,
    timeout_over_deadline,
    unsatisfiable_selector,
)
ENVOY_CHECKS: tuple[Callable[[Loaded, EnvoySide], Iterable[Finding]], ...] = (
    no_filter,
    timeout_over_message_timeout,
    missing_phases,
    metadata_not_received,
    routing_not_allowed,
    identity_not_sent,
    selector_misses_this_workload,
    buffer_limit,
    no_health_checks,
    failure_mode_allow,
)


def run(loaded: Loaded, envoy: EnvoySide | None) -> list[Finding]:
    findings = [f for check in CONFIG_CHECKS for f in check(loaded)]
    if envoy is not None:
        findings += [f for check in ENVOY_CHECKS for f in check(loaded, envoy)]
    return sorted(findings, key=lambda f: (-f.severity, f.check, f.plugin or ""))
