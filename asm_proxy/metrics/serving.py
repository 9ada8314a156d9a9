"""The server's own metrics in a worker, and what records them.

- Per plugin (labels `plugin`, `type`, `event`): hook calls by outcome, hook duration,
  FAIL_OPEN bypasses and FAIL_CLOSE refusals — recorded by the hook loop itself
  (chain.run_hooks) into the cells each chain entry gets when the chain is bound
  (`bind_chain`): a hook call costs one dict lookup, three adds and a `bisect`.
- Per stream (label `service`: ext_proc or ext_authz): streams open, streams ended by how
  (`end`), their duration, immediate responses by status — from the stream seam.
- The process counters of `asm_proxy.stats` (messages by kind, body bytes, offload jobs
  and bytes, ...), turned into families only when a snapshot is taken.

Label values are bounded: plugin names and types come from the config, events, outcomes,
ends and services are enums, statuses are HTTP status codes; no path, host or header.
"""

from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from asm_proxy import observe
from asm_proxy.events import Event
from asm_proxy.metrics.store import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    REGISTRY,
    Cell,
    Family,
    HistogramCell,
    Registry,
)
from asm_proxy.observe import Outcome, StreamEnd
from asm_proxy.stats import counters, message_kinds

if TYPE_CHECKING:
    from asm_proxy.chain import Chain, Entry
    from asm_proxy.exchange import Exchange

#: How a hook call is counted: a hook that had no time left to start is a timeout.
OUTCOME_LABEL = {
    Outcome.OK: "ok",
    Outcome.RESPOND: "respond",
    Outcome.ERROR: "error",
    Outcome.TIMEOUT: "timeout",
    Outcome.SKIPPED: "timeout",
}
SERVICES = (observe.EXT_PROC, observe.EXT_AUTHZ)

#: Exchanges, not hooks: an ext_proc stream lasts as long as the phases Envoy sends.
STREAM_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Families:
    """The server's families in one registry."""

    def __init__(self, registry: Registry) -> None:
        f = registry.family
        plugin_event = ("plugin", "type", "event")
        self.hook_calls = f(
            "asm_proxy_hook_calls_total",
            COUNTER,
            "Plugin hook calls, by how they ended (ok, respond, error, timeout)",
            (*plugin_event, "outcome"),
        )
        self.hook_seconds = f(
            "asm_proxy_hook_duration_seconds",
            HISTOGRAM,
            "Time spent in one plugin hook call",
            plugin_event,
        )
        self.bypassed = f(
            "asm_proxy_fail_open_bypasses_total",
            COUNTER,
            "Failed or overrunning hooks of FAIL_OPEN plugins: the plugin was skipped",
            plugin_event,
        )
        self.refused = f(
            "asm_proxy_fail_closed_total",
            COUNTER,
            "Failed or overrunning hooks of FAIL_CLOSE plugins: the request got a 500",
            plugin_event,
        )
        self.streams_open = f(
            "asm_proxy_streams_open",
            GAUGE,
            "ext_proc streams and ext_authz checks in progress",
            ("service",),
        )
        self.streams = f(
            "asm_proxy_streams_total",
            COUNTER,
            "ext_proc streams and ext_authz checks, by how they ended",
            ("service", "end"),
        )
        self.stream_seconds = f(
            "asm_proxy_stream_duration_seconds",
            HISTOGRAM,
            "How long an ext_proc stream (an HTTP exchange) or an ext_authz check lasted",
            ("service",),
            STREAM_SECONDS,
        )
        self.immediate = f(
            "asm_proxy_immediate_responses_total",
            COUNTER,
            "Responses asm-proxy gave the client itself (immediate responses, ext_authz "
            "denials), by HTTP status",
            ("service", "status"),
        )
        self.open_cells = {s: _cell(self.streams_open, (s,)) for s in SERVICES}
        self.seconds_cells = {s: _hcell(self.stream_seconds, (s,)) for s in SERVICES}
        self.end_cells = {
            (s, end): _cell(self.streams, (s, end.value)) for s in SERVICES for end in _ends(s)
        }


def _ends(service: str) -> tuple[StreamEnd, ...]:
    if service == observe.EXT_AUTHZ:
        return (StreamEnd.ALLOWED, StreamEnd.DENIED, StreamEnd.INTERNAL_ERROR, StreamEnd.CANCELLED)
    return (
        StreamEnd.COMPLETE,
        StreamEnd.CLOSED_EARLY,
        StreamEnd.PROTOCOL_ERROR,
        StreamEnd.INTERNAL_ERROR,
        StreamEnd.CANCELLED,
    )


def _cell(family: Family, values: tuple[str, ...]) -> Cell:
    cell = family.cell(values)
    assert isinstance(cell, Cell)
    return cell


def _hcell(family: Family, values: tuple[str, ...]) -> HistogramCell:
    cell = family.cell(values)
    assert isinstance(cell, HistogramCell)
    return cell


_families: weakref.WeakKeyDictionary[Registry, Families] = weakref.WeakKeyDictionary()


def families(registry: Registry = REGISTRY) -> Families:
    found = _families.get(registry)
    if found is None:
        found = _families[registry] = Families(registry)
    return found


class HookMeter:
    """One chain entry's cells, made when the chain is bound; run_hooks records into them
    directly (no observer call: metrics are on by default, so a hook's recording must cost
    next to nothing)."""

    __slots__ = ("cells",)

    def __init__(self, fam: Families, entry: Entry) -> None:
        events = sorted(entry.plugin.hooks)
        # A failure is a bypass (FAIL_OPEN) or a refusal (FAIL_CLOSE), by the strategy.
        failures = fam.bypassed if entry.fail_open else fam.refused
        #: (event, outcome) -> (its calls cell, the event's duration histogram, the failure
        #: cell if the outcome is a failure): one lookup per call.
        self.cells: dict[tuple[Event, Outcome], tuple[Cell, HistogramCell, Cell | None]] = {}
        for e in events:
            labels = (entry.name, entry.type_name, e.hook.removeprefix("on_"))
            seconds = _hcell(fam.hook_seconds, labels)
            failed = _cell(failures, labels)
            for outcome in Outcome:
                calls = _cell(fam.hook_calls, (*labels, OUTCOME_LABEL[outcome]))
                self.cells[e, outcome] = (calls, seconds, failed if outcome.failed else None)

    def record(self, event: Event, outcome: Outcome, seconds: float) -> None:
        calls, histogram, failed = self.cells[event, outcome]
        calls.value += 1
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds
        if failed is not None:
            failed.value += 1


def bind_chain(chain: Chain, registry: Registry = REGISTRY) -> None:
    """Give each entry of `chain` its hook cells and bind its plugin's declared metrics;
    raises ValueError if a plugin's metric clashes with one already registered."""
    fam = families(registry)
    for entry in chain.entries:
        for metric in entry.plugin.declared_metrics:
            metric.bind(registry, entry.name, entry.type_name)
        entry.meter = HookMeter(fam, entry)


def forget_plugins(keep: Iterable[str], registry: Registry = REGISTRY) -> None:
    """Drop the series of plugins no longer configured (after a reload's old chain ended)."""
    registry.forget("plugin", keep)


class StreamMetrics:
    """observe.stream_meter: streams open, how they ended, how long they took."""

    def __init__(self, registry: Registry = REGISTRY) -> None:
        self.families = families(registry)

    def started(self, service: str) -> float:
        self.families.open_cells[service].value += 1
        return time.perf_counter()

    def ended(
        self, service: str, exchange: Exchange | None, end: StreamEnd, started: float
    ) -> None:
        seconds = time.perf_counter() - started
        fam = self.families
        fam.open_cells[service].value -= 1
        fam.end_cells[service, end].value += 1
        histogram = fam.seconds_cells[service]
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds
        if exchange is not None and exchange.immediate_status:
            _cell(fam.immediate, (service, str(exchange.immediate_status))).value += 1


STREAMS = StreamMetrics()


_recorders = 0


def record(on: bool) -> None:
    """Start recording the server's metrics in this process, or stop (counted: with
    several servers in one process, the last to stop removes the stream meter)."""
    global _recorders
    _recorders = max(0, _recorders + (1 if on else -1))
    observe.stream_meter = STREAMS if _recorders else None


# -- the process counters, as families when a snapshot is taken -----------------------------

#: stats.counters field -> (metric, help, labels). Fields not listed are covered by the
#: labelled families above or are for tests only.
COUNTER_FAMILIES: dict[str, tuple[str, str, dict[str, str]]] = {
    "responses": ("asm_proxy_responses_total", "ProcessingResponses sent to Envoy", {}),
    "mode_overrides": (
        "asm_proxy_mode_overrides_total",
        "Answers that asked Envoy for fewer phases (mode_override)",
        {},
    ),
    "body_bytes_joined": (
        "asm_proxy_body_bytes_joined_total",
        "Bytes copied to join body chunks into one body (a plugin read body.data)",
        {},
    ),
    "bodies_replaced": ("asm_proxy_bodies_replaced_total", "Bodies plugins replaced", {}),
    "body_bytes_sent": (
        "asm_proxy_body_bytes_sent_total",
        "Body bytes sent back to Envoy (replaced bodies, held chunks)",
        {},
    ),
    "offloaded_calls": (
        "asm_proxy_offload_jobs_total",
        "Calls run in the offload process pool",
        {},
    ),
    "offload_bytes_in": (
        "asm_proxy_offload_bytes_total",
        "Bytes copied through shared memory to and from the offload pool",
        {"direction": "in"},
    ),
    "offload_bytes_out": (
        "asm_proxy_offload_bytes_total",
        "Bytes copied through shared memory to and from the offload pool",
        {"direction": "out"},
    ),
    "identity_refusals": (
        "asm_proxy_identity_refusals_total",
        "Exchanges and checks refused: Envoy's node metadata or ext_authz context extensions "
        "contradicted the proven peer",
        {},
    ),
    "streams_reset_before_status": (
        "asm_proxy_streams_reset_before_status_total",
        "Streams Envoy reset before their final gRPC status went out (harmless)",
        {},
    ),
}


def counter_families() -> list[dict[str, Any]]:
    """stats.counters and message kinds as snapshot families (made per snapshot)."""
    registry = Registry()
    values = counters.snapshot()
    for field, (name, help, labels) in COUNTER_FAMILIES.items():
        family = registry.family(name, COUNTER, help, tuple(labels))
        _cell(family, tuple(labels.values())).value = float(values[field])
    kinds = registry.family(
        "asm_proxy_messages_total",
        COUNTER,
        "ProcessingRequests received from Envoy, by kind (request_headers, ...)",
        ("kind",),
    )
    for kind, count in message_kinds.items():
        _cell(kinds, (kind,)).value = float(count)
    return registry.snapshot()


def snapshot(registry: Registry = REGISTRY) -> list[dict[str, Any]]:
    """Everything this worker reports: its registry and the process counters."""
    return registry.snapshot() + counter_families()
