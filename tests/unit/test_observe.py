"""The observer seam: told before and after every hook, with its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from asm_proxy import observe
from asm_proxy.api import Event, FailStrategy, Http, Plugin, Respond
from asm_proxy.chain import Entry
from asm_proxy.observe import Outcome
from asm_proxy.testing import PluginHost


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Event, Outcome | None]] = []

    def before(self, entry: Entry, event: Event, http: Http) -> Any:
        self.calls.append(("before", entry.name, event, None))
        return (entry.name, http.request.path)

    def after(
        self,
        token: Any,
        entry: Entry,
        event: Event,
        outcome: Outcome,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        assert token == (entry.name, "/")
        assert seconds >= 0
        assert (error is not None) == (outcome in (Outcome.ERROR, Outcome.TIMEOUT))
        self.calls.append(("after", entry.name, event, outcome))


class Raising:
    def before(self, entry: Entry, event: Event, http: Http) -> Any:
        raise RuntimeError("observer bug")

    def after(self, *args: Any) -> None:
        raise AssertionError("never reached")


class Ok(Plugin):
    def on_request_headers(self, http: Http) -> None: ...


class Denies(Plugin):
    def on_request_headers(self, http: Http) -> Respond:
        return Respond(403)


class Breaks(Plugin):
    def on_request_headers(self, http: Http) -> None:
        raise ValueError("broken")


class Hangs(Plugin):
    async def on_request_headers(self, http: Http) -> None:
        await asyncio.sleep(10)


@pytest.fixture
def recording() -> Iterator[Recording]:
    observer = Recording()
    observe.add_observer(observer)
    yield observer
    observe.remove_observer(observer)


@pytest.mark.parametrize(
    ("plugin", "outcome"),
    [
        (Ok, Outcome.OK),
        (Denies, Outcome.RESPOND),
        (Breaks, Outcome.ERROR),
        (Hangs, Outcome.TIMEOUT),
    ],
)
def test_each_outcome_is_reported(
    recording: Recording, plugin: type[Plugin], outcome: Outcome
) -> None:
    host = PluginHost(plugin, name="p", timeout=0.02, fail_strategy=FailStrategy.FAIL_OPEN)
    host.request_headers()
    assert recording.calls == [
        ("before", "p", Event.REQUEST_HEADERS, None),
        ("after", "p", Event.REQUEST_HEADERS, outcome),
    ]


def test_an_observer_that_raises_is_dropped_and_the_request_goes_on(
    recording: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    raising = Raising()
    observe.add_observer(raising)
    try:
        step = PluginHost(Denies, name="p").request_headers()
    finally:
        observe.remove_observer(raising)
    assert step.immediate is not None and step.immediate.status == 403
    assert raising not in observe.observers
    assert recording.calls[-1] == ("after", "p", Event.REQUEST_HEADERS, Outcome.RESPOND)
    assert "hook observer" in caplog.text and "failed; it is removed" in caplog.text


def test_no_observer_no_calls() -> None:
    """Without observers the loop runs as before (nothing registered is left over)."""
    assert observe.observers == []
    assert PluginHost(Ok).request_headers().immediate is None
