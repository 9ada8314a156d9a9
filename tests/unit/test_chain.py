"""The chain: order, selection, fail strategies, deadlines, respond-now, per-plugin state."""

from __future__ import annotations

import asyncio

import pytest

from asm_proxy.api import Http, Plugin, PluginConfig, Respond
from asm_proxy.chain import Chain, Entry
from asm_proxy.plugin import FailStrategy, Phase
from asm_proxy.stats import counters
from asm_proxy.testing import PluginHost, mode_of


class Tag(Plugin):
    """Appends its name to x-order, so a test can read the order hooks ran in."""

    def on_request_headers(self, http: Http) -> None:
        http.request.headers.append("x-order", self.name)

    def on_response_headers(self, http: Http) -> None:
        http.response.headers.append("x-order", self.name)


class Deny(Plugin):
    def on_request_headers(self, http: Http) -> Respond:
        return Respond(403, body="no", details="deny")


class Counting(Plugin):
    def new_state(self) -> dict[str, int]:
        return {"n": 0}

    def on_request_headers(self, http: Http) -> None:
        http.state["n"] += 1
        http.request.headers.set("x-count", str(http.state["n"]))

    def on_response_headers(self, http: Http) -> None:
        http.state["n"] += 1
        http.response.headers.set("x-count", str(http.state["n"]))


class Sleepy(Plugin):
    class Config(PluginConfig):
        seconds: float = 10

    async def on_request_headers(self, http: Http) -> None:
        http.request.headers.set("x-sleepy", "started")
        await asyncio.sleep(self.config.seconds)
        http.request.headers.set("x-sleepy", "finished")


class BadReturn(Plugin):
    def on_request_headers(self, http: Http) -> str:  # type: ignore[override]
        return "oops"


def entry(cls: type[Plugin], name: str, index: int, **kw) -> Entry:
    plugin = cls(cls.Config())
    plugin.name = name
    return Entry(index=index, name=name, type_name=cls.__name__, plugin=plugin, **kw)


def host(*entries: Entry, **kw) -> PluginHost:
    return PluginHost(chain=Chain(entries), **kw)


class TestOrder:
    def test_phase_then_priority_then_file_order(self) -> None:
        """AUTHN, AUTHZ, STATS, UNSPECIFIED; higher priority first; ties keep file order."""
        h = host(
            entry(Tag, "unspecified", 0),
            entry(Tag, "stats", 1, phase=Phase.STATS),
            entry(Tag, "authz-low", 2, phase=Phase.AUTHZ, priority=1),
            entry(Tag, "authz-high", 3, phase=Phase.AUTHZ, priority=5),
            entry(Tag, "authn", 4, phase=Phase.AUTHN),
            entry(Tag, "authz-low-2", 5, phase=Phase.AUTHZ, priority=1),
        )
        step = h.request_headers()
        assert step.headers.get_all("x-order") == [
            "authn",
            "authz-high",
            "authz-low",
            "authz-low-2",
            "stats",
            "unspecified",
        ]

    def test_response_hooks_run_in_reverse(self) -> None:
        """Like Envoy's encoder filters, the response passes the chain backwards."""
        h = host(entry(Tag, "first", 0, phase=Phase.AUTHN), entry(Tag, "second", 1))
        h.request_headers()
        step = h.response_headers()
        assert step.headers.get_all("x-order") == ["second", "first"]

    def test_later_plugins_see_earlier_changes(self) -> None:
        """A later plugin reads the headers as earlier ones left them."""

        class Reader(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.request.headers.set("x-saw", ",".join(http.request.headers.get_all("x-order")))

        h = host(entry(Tag, "a", 0), entry(Reader, "reader", 1))
        assert h.request_headers().headers["x-saw"] == "a"


class TestRespondNow:
    def test_first_respond_stops_the_chain(self) -> None:
        """Nothing after a Respond runs; the reply is an ImmediateResponse."""
        h = host(entry(Tag, "before", 0), entry(Deny, "deny", 1), entry(Tag, "after", 2))
        step = h.request_headers()
        assert step.immediate is not None
        assert (step.immediate.status, step.immediate.body, step.immediate.details) == (
            403,
            b"no",
            "deny",
        )

    def test_respond_headers_replace_defaults(self) -> None:
        """A Respond's content-type replaces Envoy's text/plain."""

        class Json(Plugin):
            def on_request_headers(self, http: Http) -> Respond:
                return Respond(
                    200,
                    body=b"{}",
                    headers=[("content-type", "application/json"), ("x-a", "1"), ("x-a", "2")],
                )

        step = host(entry(Json, "json", 0)).request_headers()
        assert step.immediate is not None
        assert step.immediate.headers.get_all("content-type") == ["application/json"]
        assert step.immediate.headers.get_all("x-a") == ["1", "2"]

    def test_invalid_status_is_refused(self) -> None:
        """Respond refuses statuses Envoy would not send."""
        with pytest.raises(ValueError, match="final HTTP status"):
            Respond(99)


class TestFailures:
    def test_fail_open_skips_the_plugin_and_undoes_its_changes(self) -> None:
        """A raising FAIL_OPEN plugin costs only itself: its half-made changes vanish."""
        from tests.support.plugins import Raiser

        h = PluginHost(Raiser, fail_strategy=FailStrategy.FAIL_OPEN)
        before = counters.fail_open
        step = h.request_headers()
        assert step.immediate is None
        assert "x-raiser" not in step.headers
        assert step.metadata == {}
        assert counters.fail_open == before + 1

    def test_fail_close_answers_500(self) -> None:
        """A raising FAIL_CLOSE plugin fails the request with a 500 naming it."""
        from tests.support.plugins import Raiser

        step = PluginHost(Raiser, name="raiser").request_headers()
        assert step.immediate is not None
        assert step.immediate.status == 500
        assert step.immediate.details == "asm_proxy_plugin_error:raiser"

    def test_timeout_fail_open(self) -> None:
        """An async hook past its timeout is cancelled and undone; the chain goes on."""
        h = host(
            entry(Sleepy, "sleepy", 0, timeout=0.02, fail_strategy=FailStrategy.FAIL_OPEN),
            entry(Tag, "after", 1),
        )
        step = h.request_headers()
        assert step.immediate is None
        assert "x-sleepy" not in step.headers
        assert step.headers["x-order"] == "after"

    def test_timeout_fail_close(self) -> None:
        """An async hook past its timeout under FAIL_CLOSE fails the request."""
        step = host(entry(Sleepy, "sleepy", 0, timeout=0.02)).request_headers()
        assert step.immediate is not None
        assert step.immediate.details == "asm_proxy_plugin_timeout:sleepy"

    def test_message_deadline_bounds_everything(self) -> None:
        """Without a plugin timeout the server's deadline still answers in time."""
        from asm_proxy.config import ServerSettings

        h = host(
            entry(Sleepy, "sleepy", 0, fail_strategy=FailStrategy.FAIL_OPEN),
            settings=ServerSettings(deadline=0.05),
        )
        loop_time = asyncio.new_event_loop()
        start = loop_time.time()
        step = h.request_headers()
        assert loop_time.time() - start < 1.0
        loop_time.close()
        assert step.immediate is None

    def test_blocking_sync_hook_overrun_is_a_failure(self) -> None:
        """A sync hook cannot be interrupted, but one that overran is treated as failed."""
        from tests.support.plugins import Hanger

        h = PluginHost(
            Hanger, {"blocking_ms": 60}, timeout=0.02, fail_strategy=FailStrategy.FAIL_OPEN
        )
        step = h.request_headers()
        assert "x-hanger" not in step.headers

    def test_wrong_return_type_is_a_failure(self) -> None:
        """Returning something other than None or Respond is a plugin error."""
        step = host(entry(BadReturn, "bad", 0)).request_headers()
        assert step.immediate is not None
        assert step.immediate.details == "asm_proxy_plugin_error:bad"


class TestState:
    def test_one_slot_per_plugin_per_exchange(self) -> None:
        """http.state is the running plugin's own, fresh for every exchange."""
        h = host(entry(Counting, "a", 0), entry(Counting, "b", 1))
        assert h.request_headers().headers["x-count"] == "1"  # b's slot, not a's
        assert h.response_headers().headers["x-count"] == "2"
        h.new_exchange()
        assert h.request_headers().headers["x-count"] == "1"


class TestPhasesOnDemand:
    def test_header_only_chain_skips_everything_else(self) -> None:
        """A request-headers-only chain asks Envoy for no bodies, trailers or response."""
        step = host(
            entry(Deny, "x", 0, matches=lambda req: False), entry(Tag, "t", 1)
        ).request_headers()
        mode = mode_of(step)
        # Tag has a response hook, so response headers are wanted; nothing else is.
        assert mode == {
            "request_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
            "response_trailer_mode": "SKIP",
        }

    def test_unselected_plugins_do_not_count(self) -> None:
        """Only the plugins chosen for this exchange decide the phases."""
        from tests.support.plugins import UpperBody

        body_plugin = UpperBody(UpperBody.Config())
        body_plugin.name = "upper"
        chain = Chain(
            [
                Entry(
                    index=0,
                    name="upper",
                    type_name="UpperBody",
                    plugin=body_plugin,
                    matches=lambda req: req.path_only.startswith("/body"),
                )
            ]
        )
        h = PluginHost(chain=chain)
        assert (
            mode_of(h.request_headers({":path": "/other"}, end_of_stream=False))[
                "request_body_mode"
            ]
            == "NONE"
        )
        h.new_exchange()
        mode = mode_of(h.request_headers({":path": "/body"}, end_of_stream=False))
        assert mode["request_body_mode"] == "BUFFERED"
        assert mode["response_body_mode"] == "BUFFERED"

    def test_done_drops_later_phases(self) -> None:
        """A plugin that calls http.done() is no longer asked about; Envoy is told."""

        class OnlyJson(Plugin):
            def on_response_headers(self, http: Http) -> None:
                if http.response.headers.get("content-type") != "application/json":
                    http.done()

            def on_response_body(self, http: Http) -> None:
                http.response.body.replace(b"{}")

        h = PluginHost(OnlyJson)
        h.request_headers()
        step = h.response_headers({"content-type": "text/html"})
        assert mode_of(step)["response_body_mode"] == "NONE"

    def test_done_for_one_direction(self) -> None:
        """http.done("request") drops only the request side's later phases."""

        class ResponseOnly(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.done("request")

            def on_request_body(self, http: Http) -> None:
                raise AssertionError("not asked for")

            def on_response_body(self, http: Http) -> None:
                http.response.body.replace(b"{}")

        mode = mode_of(PluginHost(ResponseOnly).request_headers(end_of_stream=False))
        assert (mode["request_body_mode"], mode["response_body_mode"]) == ("NONE", "BUFFERED")

    def test_done_refuses_unknown_direction(self) -> None:
        """A misspelt direction is a plugin error, not a silent no-op."""

        class Typo(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.done("requests")

        step = PluginHost(Typo, name="typo").request_headers()
        assert (
            step.immediate is not None and step.immediate.details == "asm_proxy_plugin_error:typo"
        )
