"""The supervisor's one scrape of every worker: sum their snapshots, render Prometheus text.

Each worker keeps its own metrics (metrics.store) and sends a snapshot when the supervisor
asks (a scrape of /metrics asks every worker once). Counters and histograms are summed
over the workers; so are gauges (streams open, a plugin's cache size: the server's total).
A worker that stops hands over a last snapshot, and one that dies leaves the one of the
previous scrape: both are kept in `Totals.retired`, so a restart never makes a counter go
down (which Prometheus would take for a reset). Only what a crashed worker counted since
the last scrape is lost.

This module alone imports prometheus-client: it renders the merged families, the
supervisor's own (workers, restarts, reloads, the config's hash) and process metrics of
the supervisor (`process_*`) and of each worker (`asm_proxy_worker_*{worker="i"}`), in the
text format or OpenMetrics as the scraper asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

Snapshot = list[dict[str, Any]]
Labels = tuple[str, ...]


@dataclass
class Merged:
    """One family summed over snapshots."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None
    series: dict[Labels, Any] = field(default_factory=dict)

    def add(self, values: Labels, value: Any) -> None:
        old = self.series.get(values)
        if old is None:
            self.series[values] = list(value) if isinstance(value, list) else value
        elif isinstance(old, list):
            self.series[values] = [a + b for a, b in zip(old, value, strict=True)]
        else:
            self.series[values] = old + value


def merge(snapshots: Iterable[Snapshot], *, keep_gauges: bool = True) -> dict[str, Merged]:
    """Sum families by name and label values. A family a snapshot declares differently
    from the first (another kind, labels or buckets: workers of another version during a
    rollout) is skipped for that snapshot rather than summed wrongly."""
    merged: dict[str, Merged] = {}
    for snapshot in snapshots:
        for family in snapshot:
            kind = family["kind"]
            if kind == "gauge" and not keep_gauges:
                continue
            buckets = tuple(family["buckets"]) if family.get("buckets") is not None else None
            labels = tuple(family["labels"])
            target = merged.get(family["name"])
            if target is None:
                target = merged[family["name"]] = Merged(
                    family["name"], kind, family["help"], labels, buckets
                )
            elif (target.kind, target.labels, target.buckets) != (kind, labels, buckets):
                continue
            for values, value in family["series"]:
                target.add(tuple(values), value)
    return merged


def as_snapshot(merged: dict[str, Merged]) -> Snapshot:
    return [
        {
            "name": m.name,
            "kind": m.kind,
            "help": m.help,
            "labels": list(m.labels),
            "buckets": list(m.buckets) if m.buckets is not None else None,
            "series": [[list(v), value] for v, value in m.series.items()],
        }
        for m in merged.values()
    ]


class Totals:
    """What workers that are gone had counted (counters and histograms only: a gauge of a
    dead worker means nothing)."""

    def __init__(self) -> None:
        self.retired: Snapshot = []

    def retire(self, last: Snapshot | None) -> None:
        if last:
            self.retired = as_snapshot(merge([self.retired, last], keep_gauges=False))

    def with_live(self, live: Sequence[Snapshot]) -> dict[str, Merged]:
        return merge([*live, self.retired])


def _float_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _metric(m: Merged) -> Metric:
    if m.kind == "counter":
        counter = CounterMetricFamily(m.name, m.help, labels=m.labels)
        for values, value in m.series.items():
            counter.add_metric(list(values), value)
        return counter
    if m.kind == "gauge":
        gauge = GaugeMetricFamily(m.name, m.help, labels=m.labels)
        for values, value in m.series.items():
            gauge.add_metric(list(values), value)
        return gauge
    histogram = HistogramMetricFamily(m.name, m.help, labels=m.labels)
    bounds = (*(m.buckets or ()), float("inf"))
    for values, value in m.series.items():
        *counts, total = value
        cumulative, running = [], 0
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            cumulative.append((_float_label(bound), running))
        histogram.add_metric(list(values), cumulative, total)
    return histogram


class FamiliesCollector(Collector):
    """Merged worker families, as prometheus-client metrics."""

    def __init__(self, merged: dict[str, Merged]) -> None:
        self.merged = merged

    def collect(self) -> Iterator[Metric]:
        for name in sorted(self.merged):
            yield _metric(self.merged[name])


class WorkerProcesses(Collector):
    """CPU, memory, file descriptors and start time of each worker, from /proc, labelled
    with the worker's index (bounded by the worker count)."""

    RENAMES = {
        "process_cpu_seconds": ("asm_proxy_worker_cpu_seconds", "counter"),
        "process_resident_memory_bytes": ("asm_proxy_worker_resident_memory_bytes", "gauge"),
        "process_open_fds": ("asm_proxy_worker_open_fds", "gauge"),
        "process_start_time_seconds": ("asm_proxy_worker_start_time_seconds", "gauge"),
    }

    def __init__(self, workers: Sequence[tuple[int, int]]) -> None:
        self.workers = workers  # (index, pid)

    def collect(self) -> Iterator[Metric]:
        out: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for index, pid in self.workers:
            reader = ProcessCollector(pid=_pid_of(pid), registry=None)
            for metric in reader.collect():
                rename = self.RENAMES.get(metric.name)
                if rename is None:
                    continue
                name, kind = rename
                target = out.get(name)
                if target is None:
                    help = metric.documentation.replace("Total user", "Worker's user")
                    target = out[name] = (
                        CounterMetricFamily(name, help, labels=["worker"])
                        if kind == "counter"
                        else GaugeMetricFamily(name, help, labels=["worker"])
                    )
                for sample in metric.samples:
                    if sample.name.endswith("_created"):
                        continue
                    target.add_metric([str(index)], sample.value)
        yield from out.values()


def _pid_of(pid: int) -> Callable[[], int]:
    return lambda: pid


class Supervisor(Collector):
    """The supervisor's own state, through a function returning it as a dict."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        g = GaugeMetricFamily
        yield g("asm_proxy_workers", "Worker processes serving", value=s["workers_serving"])
        yield g("asm_proxy_workers_configured", "Worker processes wanted", value=s["workers"])
        yield CounterMetricFamily(
            "asm_proxy_worker_restarts",
            "Workers started again after one exited (crash, kill; recycles are counted apart)",
            value=s["restarts"],
        )
        yield CounterMetricFamily(
            "asm_proxy_worker_recycles",
            "Workers replaced on purpose past maxStreamsPerWorker or maxWorkerRss",
            value=s["recycles"],
        )
        yield g(
            "asm_proxy_config_file_unusable",
            "1 while the config file is missing, not a file or unreadable (the running "
            "config stays)",
            value=s["config_file_unusable"],
        )
        yield CounterMetricFamily(
            "asm_proxy_config_file_unusable_events",
            "Times the config file became unusable (or the reason changed)",
            value=s["config_file_unusable_events"],
        )
        yield CounterMetricFamily(
            "asm_proxy_config_file_unsettled",
            "Config file changes still being written after the settle checks (not loaded)",
            value=s["config_file_unsettled"],
        )
        reloads = CounterMetricFamily(
            "asm_proxy_config_reloads",
            "Config reloads, by result (failed: the file or a plugin refused it; the "
            "running config stayed)",
            labels=["result"],
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], s["reloads"][result])
        yield reloads
        yield InfoMetricFamily(
            "asm_proxy_config",
            "The running config: its hash (sha256, 16 hex digits) and file",
            value={"hash": s["config_hash"], "file": s["config_file"]},
        )
        yield g(
            "asm_proxy_config_load_timestamp_seconds",
            "When the running config was loaded (Unix time)",
            value=s["loaded_at"],
        )
        yield g("asm_proxy_plugins_loaded", "Plugins in the running chain", value=len(s["plugins"]))
        info = InfoMetricFamily(
            "asm_proxy_plugin",
            "Each plugin of the running chain: type, phase and where the type comes from",
            labels=["plugin", "type", "phase", "provider"],
        )
        for plugin in s["plugins"]:
            info.add_metric(
                [plugin["name"], plugin["type"], plugin["phase"], plugin["provider"]], {}
            )
        yield info
        yield g("asm_proxy_ready", "1 when /readyz says ready", value=1 if s["ready"] else 0)
        yield g("asm_proxy_draining", "1 while draining (SIGTERM)", value=1 if s["draining"] else 0)
        yield InfoMetricFamily(
            "asm_proxy_build", "asm-proxy's version", value={"version": s["version"]}
        )


def render(
    merged: dict[str, Merged],
    supervisor: Callable[[], dict[str, Any]],
    workers: Sequence[tuple[int, int]],
    accept: str | None,
) -> tuple[bytes, str]:
    """The scrape's body and content type (OpenMetrics if `accept` asks for it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(merged))
    registry.register(Supervisor(supervisor))
    registry.register(WorkerProcesses(workers))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
