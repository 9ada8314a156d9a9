"""Metrics a plugin declares: counters, gauges and histograms by name, as proxy-wasm's
DefineMetric.

A plugin declares its metrics in `__init__` through its own methods,

    self.answers = self.counter("discovery_answers_total", "Registry answers by outcome",
                                labels=["outcome"])
    ...
    self.answers.labels(outcome="rewritten").inc()

and keeps the handles (or children of them: `labels()` is a dict lookup, worth doing once
in `__init__` for a label set used on every request). The name is exposed with the prefix
`asm_proxy_plugin_` and the labels `plugin` (the configured name) and `type` in front of
the plugin's own, so two instances of one type are told apart and one plugin's metrics
never collide with the server's.

The configured name is not known in `__init__`: the handles are bound when the server
starts the chain (`bind`), and what the children point at is swapped in place, so the
plugin's references stay valid. A reloaded plugin with the same name and type continues
the same series, as proxy-wasm's metrics outlive a VM reload. Before binding (`asm-proxy
validate`, a plugin built by hand) updates go to cells nobody reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from asm_proxy.metrics.store import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    SECONDS,
    AnyCell,
    Cell,
    Family,
    HistogramCell,
    Kind,
    Registry,
    check_name,
)

PREFIX = "asm_proxy_plugin_"
#: Labels the framework puts on every plugin metric.
RESERVED = ("plugin", "type")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class CounterChild:
    """One series of a counter: only goes up."""

    __slots__ = ("_cell",)

    def __init__(self, cell: AnyCell) -> None:
        self._cell = cell

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up: inc() takes an amount >= 0")
        self._cell.value += amount  # type: ignore[union-attr]

    @property
    def value(self) -> float:
        return self._cell.value  # type: ignore[union-attr]


class GaugeChild:
    """One series of a gauge: set, or moved up and down."""

    __slots__ = ("_cell",)

    def __init__(self, cell: AnyCell) -> None:
        self._cell = cell

    def set(self, value: float) -> None:
        self._cell.value = value  # type: ignore[union-attr]

    def inc(self, amount: float = 1.0) -> None:
        self._cell.value += amount  # type: ignore[union-attr]

    def dec(self, amount: float = 1.0) -> None:
        self._cell.value -= amount  # type: ignore[union-attr]

    @property
    def value(self) -> float:
        return self._cell.value  # type: ignore[union-attr]


class HistogramChild:
    """One series of a histogram: observations (seconds, bytes, ...) counted in buckets."""

    __slots__ = ("_cell",)

    def __init__(self, cell: AnyCell) -> None:
        self._cell = cell

    def observe(self, value: float) -> None:
        self._cell.observe(value)  # type: ignore[union-attr]

    @property
    def count(self) -> int:
        cell = self._cell
        assert isinstance(cell, HistogramCell)
        return cell.count

    @property
    def sum(self) -> float:
        cell = self._cell
        assert isinstance(cell, HistogramCell)
        return cell.sum


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class Declared(Generic[ChildT]):
    """A declared metric: `labels(...)` gives the child for one set of label values."""

    kind: ClassVar[Kind]
    _child: ClassVar[type]

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r}: lower-case letters, digits and '_'")
        check_name(PREFIX + name, self.kind)
        if not help.strip():
            raise ValueError(f"metric {name!r}: say what it counts (help)")
        clash = set(labels) & set(RESERVED)
        if clash:
            raise ValueError(f"metric {name!r}: labels {sorted(clash)} are set by asm-proxy")
        self.name = PREFIX + name
        self.help = help
        self.labelnames = tuple(labels)
        self.buckets = tuple(buckets) if buckets is not None else None
        if self.kind == HISTOGRAM:
            self.buckets = self.buckets or SECONDS
        # Checked now (a bad label name or bucket list fails the plugin's load).
        Family(self.name, self.kind, help, RESERVED + self.labelnames, self.buckets)
        self._family: Family | None = None
        self._bound: tuple[str, ...] = ()
        self._children: dict[tuple[str, ...], ChildT] = {}

    def labels(self, *values: str, **by_name: str) -> ChildT:
        """The child for these label values (positional, or by name; not both)."""
        if by_name:
            if values:
                raise TypeError("give label values by position or by name, not both")
            try:
                values = tuple(str(by_name[n]) for n in self.labelnames)
            except KeyError as missing:
                raise ValueError(f"{self.name}: label {missing} is missing") from None
            if len(by_name) != len(self.labelnames):
                extra = sorted(set(by_name) - set(self.labelnames))
                raise ValueError(f"{self.name}: unknown label(s) {extra}")
        elif len(values) != len(self.labelnames):
            raise ValueError(
                f"{self.name} has labels {list(self.labelnames)}; {len(values)} value(s) given"
            )
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._child(self._cell(values))
        return child

    def _cell(self, values: tuple[str, ...]) -> AnyCell:
        if self._family is None:
            return HistogramCell(self.buckets or SECONDS) if self.kind == HISTOGRAM else Cell()
        return self._family.cell(self._bound + values)

    def bind(self, registry: Registry, plugin: str, type_name: str) -> None:
        """Point this metric (and the children already handed out) at `registry`'s series
        for the plugin named `plugin` of type `type_name`."""
        self._family = registry.family(
            self.name, self.kind, self.help, RESERVED + self.labelnames, self.buckets
        )
        self._bound = (plugin, type_name)
        for values, child in self._children.items():
            child._cell = self._cell(values)


class Counter(Declared[CounterChild]):
    kind = COUNTER
    _child = CounterChild

    def inc(self, amount: float = 1.0) -> None:
        """For a counter without labels."""
        self.labels().inc(amount)


class Gauge(Declared[GaugeChild]):
    kind = GAUGE
    _child = GaugeChild

    def set(self, value: float) -> None:
        """For a gauge without labels."""
        self.labels().set(value)


class Histogram(Declared[HistogramChild]):
    kind = HISTOGRAM
    _child = HistogramChild

    def observe(self, value: float) -> None:
        """For a histogram without labels."""
        self.labels().observe(value)
