"""A worker's metrics: Prometheus families of labelled cells, as cheap as an attribute add.

Prometheus's data model (counter, gauge and histogram families with label names, one
series per set of label values) kept in plain Python objects. The request path holds the
cells it updates (found once, when a chain is bound or a label set is first used), so a
counter increment is one attribute add and a histogram observation one `bisect`; nothing
is locked, since a worker's metrics are updated from its event loop only.

A worker never renders the Prometheus text format itself: the supervisor asks each worker
for `Registry.snapshot()` over their control channel and sums them (metrics.exposition).
prometheus-client's own metric objects cost ~7x more per update here, its multiprocess
mode ~17x (docs/PERFORMANCE.md, "Metrics").

Cardinality is bounded: a family keeps at most `MAX_SERIES` label sets; later ones are
folded into a single series whose label values are all `_other` (and a warning is logged
once), so a plugin that labels by host cannot grow a worker's memory without end.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

log = logging.getLogger("asm_proxy.metrics")

Kind = Literal["counter", "gauge", "histogram"]
COUNTER: Kind = "counter"
GAUGE: Kind = "gauge"
HISTOGRAM: Kind = "histogram"

#: Label sets a family keeps before folding new ones into `_other`.
MAX_SERIES = 2000
OTHER = "_other"

#: Durations of work done in a worker: 50 µs (a sync hook) to 10 s.
SECONDS = (
    0.00005,
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
    10.0,
)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Cell:
    """One counter or gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class HistogramCell:
    """One histogram series: a count per bucket (not cumulative; the last is +Inf) and
    the sum of the observed values."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le="bound").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


AnyCell = Cell | HistogramCell


def check_name(name: str, kind: Kind) -> None:
    """Prometheus naming: a valid name, counters ending in `_total`."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} is not valid (letters, digits, '_' and ':')")
    if kind == COUNTER and not name.endswith("_total"):
        raise ValueError(f"counter {name!r}: a counter's name ends in _total")
    if kind != COUNTER and name.endswith("_total"):
        raise ValueError(f"{kind} {name!r}: only counters end in _total")


class Family:
    """One metric: its kind, help, label names and a cell per set of label values."""

    __slots__ = ("_warned", "buckets", "help", "kind", "labelnames", "name", "series")

    def __init__(
        self,
        name: str,
        kind: Kind,
        help: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] | None = None,
    ) -> None:
        check_name(name, kind)
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"metric {name!r}: label name {label!r} is not allowed")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric {name!r}: label names repeat: {labelnames}")
        if kind == HISTOGRAM:
            buckets = tuple(float(b) for b in (buckets or SECONDS))
            if list(buckets) != sorted(set(buckets)) or buckets[-1] == float("inf"):
                raise ValueError(f"histogram {name!r}: buckets must increase (no +Inf)")
        elif buckets is not None:
            raise ValueError(f"{kind} {name!r} has no buckets")
        self.name = name
        self.kind = kind
        self.help = help
        self.labelnames = labelnames
        self.buckets = buckets
        self.series: dict[tuple[str, ...], AnyCell] = {}
        self._warned = False

    def same_shape(self, kind: Kind, labelnames: tuple[str, ...], buckets: Any) -> bool:
        if self.kind != kind or self.labelnames != labelnames:
            return False
        if kind == HISTOGRAM and buckets is not None:
            return self.buckets == tuple(float(b) for b in buckets)
        return True

    def cell(self, values: tuple[str, ...] = ()) -> AnyCell:
        """The series for `values` (one per label name), made on first use."""
        found = self.series.get(values)
        if found is not None:
            return found
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"metric {self.name!r} has labels {self.labelnames}, given values {values}"
            )
        if len(self.series) >= MAX_SERIES:
            if not self._warned:
                self._warned = True
                log.warning(
                    "metric %s has %d label sets; further ones are counted under %r "
                    "(a label with unbounded values, such as a path or host?)",
                    self.name,
                    MAX_SERIES,
                    OTHER,
                )
            values = (OTHER,) * len(self.labelnames)
            found = self.series.get(values)
            if found is not None:
                return found
        made: AnyCell = HistogramCell(self.buckets or SECONDS) if self.kind == HISTOGRAM else Cell()
        self.series[values] = made
        return made

    def snapshot(self) -> dict[str, Any]:
        """As JSON-ready data: what a worker sends the supervisor."""
        series: list[list[Any]] = []
        for values, cell in self.series.items():
            if isinstance(cell, HistogramCell):
                series.append([list(values), [*cell.counts, cell.sum]])
            else:
                series.append([list(values), cell.value])
        return {
            "name": self.name,
            "kind": self.kind,
            "help": self.help,
            "labels": list(self.labelnames),
            "buckets": list(self.buckets) if self.buckets is not None else None,
            "series": series,
        }


class Registry:
    """The families of one process (REGISTRY), or of one test host."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(
        self,
        name: str,
        kind: Kind,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> Family:
        """The family `name`, made on first use. Declaring it again with the same kind and
        labels returns the same family (a reloaded plugin continues its series); with
        another shape it is an error naming both."""
        labels = tuple(labelnames)
        found = self.families.get(name)
        if found is not None:
            if not found.same_shape(kind, labels, buckets):
                raise ValueError(
                    f"metric {name!r} is already a {found.kind} with labels "
                    f"{list(found.labelnames)}; cannot declare it as a {kind} with {list(labels)}"
                )
            return found
        made = Family(name, kind, help, labels, tuple(buckets) if buckets is not None else None)
        self.families[name] = made
        return made

    def get(self, name: str) -> Family | None:
        return self.families.get(name)

    def snapshot(self) -> list[dict[str, Any]]:
        return [family.snapshot() for family in self.families.values()]

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A series' value (a histogram's count): the sum over series whose labels include
        `labels`; 0 if there are none. For tests and `asm-proxy diagnose`."""
        family = self.families.get(name)
        if family is None:
            return 0.0
        wanted = dict(labels or {})
        unknown = set(wanted) - set(family.labelnames)
        if unknown:
            raise KeyError(f"metric {name!r} has no label(s) {sorted(unknown)}")
        index = [(family.labelnames.index(k), v) for k, v in wanted.items()]
        total = 0.0
        for values, cell in family.series.items():
            if all(values[i] == v for i, v in index):
                total += cell.count if isinstance(cell, HistogramCell) else cell.value
        return total

    def forget(self, label: str, keep: Iterable[str]) -> None:
        """Drop the series whose `label` has a value not in `keep` (the plugins of a
        config that is no longer running), so renamed plugins do not pile up."""
        kept = set(keep)
        for family in self.families.values():
            if label not in family.labelnames:
                continue
            i = family.labelnames.index(label)
            for values in [v for v in family.series if v[i] not in kept]:
                del family.series[values]


#: The process's registry: everything a worker reports to its supervisor.
REGISTRY = Registry()
