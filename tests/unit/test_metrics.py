"""Metrics: the worker-side store, plugin-declared metrics, and the supervisor's merge and
Prometheus rendering (parsed back with prometheus-client's own parser)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asm_proxy.api import FailStrategy, Http, Plugin, Respond
from asm_proxy.metrics import store
from asm_proxy.metrics.exposition import Totals, merge, render
from asm_proxy.metrics.serving import bind_chain, families
from asm_proxy.metrics.store import MAX_SERIES, OTHER, Registry
from asm_proxy.testing import PluginHost


class TestStore:
    def test_histogram_buckets_hold_values_up_to_their_bound(self) -> None:
        """A value equal to a bound is counted in that bound's bucket (le), a larger one
        in the next; past the last bound, in +Inf."""
        family = Registry().family("x_seconds", store.HISTOGRAM, "x", (), (0.1, 1.0))
        cell = family.cell()
        for value in (0.05, 0.1, 0.5, 1.0, 7.0):
            cell.observe(value)
        assert isinstance(cell, store.HistogramCell)
        assert cell.counts == [2, 2, 1]
        assert cell.sum == pytest.approx(8.65)

    def test_declaring_again_returns_the_same_family_or_fails(self) -> None:
        registry = Registry()
        first = registry.family("a_total", store.COUNTER, "a", ("x",))
        assert registry.family("a_total", store.COUNTER, "a", ("x",)) is first
        with pytest.raises(ValueError, match="already a counter with labels"):
            registry.family("a_total", store.COUNTER, "a", ("y",))

    @pytest.mark.parametrize(
        ("name", "kind", "message"),
        [
            ("requests", store.COUNTER, "ends in _total"),
            ("open_total", store.GAUGE, "only counters end in _total"),
            ("bad-name_total", store.COUNTER, "not valid"),
        ],
    )
    def test_names_follow_prometheus_conventions(self, name: str, kind: Any, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Registry().family(name, kind, "help")

    def test_label_sets_are_bounded(self, caplog: pytest.LogCaptureFixture) -> None:
        """Past MAX_SERIES label sets, new ones share one `_other` series (and a warning
        says which metric), so a label with unbounded values cannot grow memory."""
        family = Registry().family("hosts_total", store.COUNTER, "h", ("host",))
        for i in range(MAX_SERIES + 50):
            family.cell((f"h{i}",)).inc()
        assert len(family.series) == MAX_SERIES + 1
        assert family.series[(OTHER,)].value == 50  # type: ignore[union-attr]
        assert "hosts_total" in caplog.text

    def test_value_sums_matching_series_and_forget_drops_plugins(self) -> None:
        registry = Registry()
        family = registry.family("c_total", store.COUNTER, "c", ("plugin", "outcome"))
        family.cell(("a", "ok")).inc(2)
        family.cell(("a", "error")).inc()
        family.cell(("b", "ok")).inc(5)
        assert registry.value("c_total", {"plugin": "a"}) == 3
        assert registry.value("c_total", {"outcome": "ok"}) == 7
        registry.forget("plugin", keep=["b"])
        assert registry.value("c_total") == 5
        with pytest.raises(KeyError):
            registry.value("c_total", {"nope": "x"})


class Counting(Plugin):
    """Declares one metric of each kind and uses them on every request."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.seen = self.counter("seen_total", "Requests seen", labels=["method"])
        self.get = self.seen.labels("GET")  # a child taken before binding stays valid
        self.size = self.gauge("last_path_length", "Length of the last path")
        self.timing = self.histogram("work_seconds", "Work", buckets=[0.001, 1.0])

    def on_request_headers(self, http: Http) -> None:
        if http.request.method == "GET":
            self.get.inc()
        else:
            self.seen.labels(method=http.request.method).inc()
        self.size.set(len(http.request.path))
        self.timing.observe(0.5)


class TestDeclared:
    def test_plugin_metrics_through_the_test_host(self) -> None:
        """Declared in __init__, named asm_proxy_plugin_<name>, labelled with the plugin's
        name and type; read through the host."""
        host = PluginHost(Counting, name="counter")
        host.request_headers({":method": "GET", ":path": "/abc"})
        host.new_exchange().request_headers({":method": "POST", ":path": "/x"})
        assert host.metric("asm_proxy_plugin_seen_total", method="GET") == 1
        assert host.metric("asm_proxy_plugin_seen_total", method="POST") == 1
        assert host.metric("asm_proxy_plugin_seen_total", plugin="counter", type="Counting") == 2
        assert host.metric("asm_proxy_plugin_last_path_length") == 2
        assert host.metric("asm_proxy_plugin_work_seconds") == 2  # a histogram's count

    def test_a_reloaded_plugin_continues_its_series(self) -> None:
        """Bound again under the same name (a reload), a new instance counts on from where
        the old one was, as proxy-wasm metrics outlive a VM."""
        registry = Registry()
        host = PluginHost(Counting, name="c")
        bind_chain(host.chain, registry)
        host.request_headers({":method": "GET"})
        again = PluginHost(Counting, name="c")
        bind_chain(again.chain, registry)
        again.request_headers({":method": "GET"})
        assert registry.value("asm_proxy_plugin_seen_total", {"method": "GET"}) == 2

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("Seen_total", "x"), "lower-case"),
            (("seen", "x"), "ends in _total"),
            (("seen_total", " "), "help"),
            (("seen_total", "x", ["plugin"]), "set by asm-proxy"),
        ],
    )
    def test_bad_declarations_fail_at_load(self, args: tuple[Any, ...], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Plugin(None).counter(*args)

    def test_labels_must_match(self) -> None:
        counter = Plugin(None).counter("x_total", "x", ["a", "b"])
        with pytest.raises(ValueError, match="1 value"):
            counter.labels("only-one")
        with pytest.raises(ValueError, match="unknown label"):
            counter.labels(a="1", b="2", c="3")
        with pytest.raises(ValueError, match="only goes up"):
            counter.labels("1", "2").inc(-1)

    def test_a_clash_with_another_plugins_metric_is_an_error(self) -> None:
        class Other(Plugin):
            def __init__(self, config: Any) -> None:
                super().__init__(config)
                self.seen = self.gauge("seen_total_x", "x")

            def on_request_headers(self, http: Http) -> None: ...

        registry = Registry()
        bind_chain(PluginHost(Counting, name="a").chain, registry)
        clashing = PluginHost(Other, name="b")
        clashing.chain.entries[0].plugin.declared_metrics[0].name = "asm_proxy_plugin_seen_total"
        with pytest.raises(ValueError, match="already a counter"):
            bind_chain(clashing.chain, registry)


class Denies(Plugin):
    def on_request_headers(self, http: Http) -> Respond:
        return Respond(403)


class Breaks(Plugin):
    def on_request_headers(self, http: Http) -> None:
        raise RuntimeError("broken")


class Slow(Plugin):
    async def on_request_headers(self, http: Http) -> None:
        await asyncio.sleep(1)


class TestHookMetrics:
    def test_an_overrun_counts_as_timeout_and_its_duration_is_kept(self) -> None:
        registry = Registry()
        host = PluginHost(Slow, name="slow", timeout=0.01, fail_strategy=FailStrategy.FAIL_OPEN)
        bind_chain(host.chain, registry)
        host.request_headers()
        calls = "asm_proxy_hook_calls_total"
        assert registry.value(calls, {"plugin": "slow", "outcome": "timeout"}) == 1
        assert registry.value("asm_proxy_fail_open_bypasses_total", {"plugin": "slow"}) == 1
        assert registry.value("asm_proxy_hook_duration_seconds", {"plugin": "slow"}) == 1

    def test_calls_by_outcome_duration_and_fail_open(self) -> None:
        """Each hook call is counted by outcome and timed; a FAIL_OPEN failure counts as a
        bypass, a FAIL_CLOSE one as a refusal."""
        registry = Registry()
        denies = PluginHost(Denies, name="deny")
        opened = PluginHost(Breaks, name="open", fail_strategy=FailStrategy.FAIL_OPEN)
        closed = PluginHost(Breaks, name="closed")
        for host in (denies, opened, closed):
            bind_chain(host.chain, registry)
            host.request_headers()
        calls = "asm_proxy_hook_calls_total"
        assert registry.value(calls, {"plugin": "deny", "outcome": "respond"}) == 1
        assert registry.value(calls, {"plugin": "open", "outcome": "error"}) == 1
        assert registry.value(calls, {"plugin": "deny", "outcome": "ok"}) == 0
        assert registry.value("asm_proxy_hook_duration_seconds", {"plugin": "deny"}) == 1
        assert registry.value("asm_proxy_fail_open_bypasses_total", {"plugin": "open"}) == 1
        assert registry.value("asm_proxy_fail_closed_total", {"plugin": "closed"}) == 1
        assert registry.value("asm_proxy_fail_open_bypasses_total", {"plugin": "closed"}) == 0


def _parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _worker(hook_calls: float, open_streams: float, seconds: list[float]) -> list[dict[str, Any]]:
    registry = Registry()
    fam = families(registry)
    fam.hook_calls.cell(("p", "t", "request_headers", "ok")).inc(hook_calls)
    fam.open_cells["ext_proc"].inc(open_streams)
    for value in seconds:
        fam.seconds_cells["ext_proc"].observe(value)
    return registry.snapshot()


def _supervisor() -> dict[str, Any]:
    return {
        "workers": 2,
        "workers_serving": 2,
        "restarts": 1,
        "reloads": {"ok": 3, "failed": 1},
        "recycles": 2,
        "config_file_unusable": 1,
        "config_file_unusable_events": 4,
        "config_file_unsettled": 0,
        "config_hash": "abcdef0123456789",
        "config_file": "/etc/asm-proxy/config.yaml",
        "loaded_at": 1700000000.0,
        "plugins": [{"name": "p", "type": "t", "phase": "AUTHN", "provider": "x 1.0"}],
        "ready": True,
        "draining": False,
        "version": "0.1.0",
    }


class TestExposition:
    def test_workers_are_summed_into_one_scrape(self) -> None:
        merged = merge([_worker(3, 1, [0.001]), _worker(4, 2, [0.5, 70.0])])
        body, content_type = render(merged, _supervisor, [], None)
        assert content_type.startswith("text/plain")
        samples = _parse(body.decode())
        key = (("event", "request_headers"), ("outcome", "ok"), ("plugin", "p"), ("type", "t"))
        assert samples["asm_proxy_hook_calls_total"][key] == 7
        assert samples["asm_proxy_streams_open"][(("service", "ext_proc"),)] == 3
        count = samples["asm_proxy_stream_duration_seconds_count"]
        assert count[(("service", "ext_proc"),)] == 3
        buckets = samples["asm_proxy_stream_duration_seconds_bucket"]
        assert buckets[(("le", "0.001"), ("service", "ext_proc"))] == 1
        assert buckets[(("le", "1.0"), ("service", "ext_proc"))] == 2
        assert buckets[(("le", "+Inf"), ("service", "ext_proc"))] == 3
        assert (
            samples["asm_proxy_config_info"][
                (("file", "/etc/asm-proxy/config.yaml"), ("hash", "abcdef0123456789"))
            ]
            == 1
        )
        assert samples["asm_proxy_config_reloads_total"][(("result", "failed"),)] == 1
        assert samples["asm_proxy_worker_restarts_total"][()] == 1
        assert samples["asm_proxy_worker_recycles_total"][()] == 2
        assert samples["asm_proxy_config_file_unusable"][()] == 1
        assert samples["asm_proxy_config_file_unusable_events_total"][()] == 4
        assert samples["asm_proxy_plugins_loaded"][()] == 1
        assert "process_cpu_seconds_total" in samples

    def test_openmetrics_when_asked(self) -> None:
        body, content_type = render(
            merge([_worker(1, 0, [])]), _supervisor, [], "application/openmetrics-text"
        )
        assert content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")

    def test_a_dead_workers_counts_stay_in_the_total(self) -> None:
        """Counters never go down when a worker is replaced: what it had reported is kept
        (its gauges are not: a dead worker has no streams open)."""
        totals = Totals()
        first, second = _worker(5, 2, [0.1]), _worker(1, 1, [])
        before = totals.with_live([first, second])
        totals.retire(first)
        after = totals.with_live([_worker(0, 0, []), second])
        calls = ("p", "t", "request_headers", "ok")
        assert before["asm_proxy_hook_calls_total"].series[calls] == 6
        assert after["asm_proxy_hook_calls_total"].series[calls] == 6
        assert after["asm_proxy_streams_open"].series[("ext_proc",)] == 1
        seconds = after["asm_proxy_stream_duration_seconds"].series[("ext_proc",)]
        assert sum(seconds[:-1]) == 1  # the retired worker's one observation

    def test_a_family_declared_differently_is_not_summed(self) -> None:
        """During a rollout two versions may disagree on a family: the first one wins,
        the other's samples are left out rather than added up wrongly."""
        a = Registry()
        a.family("x_total", store.COUNTER, "x", ("l",)).cell(("1",)).inc()
        b = Registry()
        b.family("x_total", store.COUNTER, "x", ("other",)).cell(("1",)).inc(5)
        merged = merge([a.snapshot(), b.snapshot()])
        assert merged["x_total"].series == {("1",): 1.0}
