"""A plugin that raises or hangs, under FAIL_OPEN and FAIL_CLOSE, with Envoy's
failure_mode_allow both ways and its message_timeout."""

from __future__ import annotations

import time

import pytest

from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.stats import counters
from tests.integration.conftest import StackFactory


def chain(plugin: str, strategy: str, timeout: str = "", deadline: str = "180ms") -> str:
    timeout_line = f", timeout: {timeout}" if timeout else ""
    return f"""
deadline: {deadline}
plugins:
  - {{name: bad, type: 'tests.support.plugins:{plugin}', failStrategy: {strategy}{timeout_line}}}
  - {{name: after, type: headers, config: {{request: {{set: {{x-after: ran}}}}}}}}
"""


@pytest.mark.parametrize("failure_mode_allow", [False, True])
@pytest.mark.parametrize(("plugin", "timeout"), [("Raiser", ""), ("Hanger", "50ms")])
def test_fail_open_costs_only_the_plugin(
    stack: StackFactory, plugin: str, timeout: str, failure_mode_allow: bool
) -> None:
    """FAIL_OPEN: the request goes on, later plugins run, the failed one's changes are gone."""
    s = stack(
        chain(plugin, "FAIL_OPEN", timeout), ext_proc=ExtProc(failure_mode_allow=failure_mode_allow)
    )
    resp = s.get("/")
    assert resp.status_code == 200
    seen = s.seen("a")
    assert seen.header("x-after") == "ran"
    assert seen.header("x-raiser") is None and seen.header("x-hanger") is None


@pytest.mark.parametrize("failure_mode_allow", [False, True])
@pytest.mark.parametrize(
    ("plugin", "timeout", "reason"), [("Raiser", "", "error"), ("Hanger", "50ms", "timeout")]
)
def test_fail_close_fails_the_request(
    stack: StackFactory, plugin: str, timeout: str, reason: str, failure_mode_allow: bool
) -> None:
    """FAIL_CLOSE: asm-proxy answers 500 itself, in time, whatever Envoy's failure_mode_allow."""
    s = stack(
        chain(plugin, "FAIL_CLOSE", timeout),
        ext_proc=ExtProc(failure_mode_allow=failure_mode_allow),
    )
    before = len(s.upstreams["a"].requests)
    resp = s.get("/")
    assert resp.status_code == 500
    assert len(s.upstreams["a"].requests) == before
    (entry,) = s.log_entries(1)
    assert entry["details"] == f"asm_proxy_plugin_{reason}:bad"


@pytest.mark.parametrize(("failure_mode_allow", "status"), [(True, 200), (False, 504)])
def test_hang_past_envoy_message_timeout(
    stack: StackFactory, failure_mode_allow: bool, status: int
) -> None:
    """If asm-proxy's deadline is longer than Envoy's message_timeout (a misconfiguration),
    Envoy's own failure_mode_allow decides; asm-proxy drops the abandoned stream."""
    s = stack(
        chain("Hanger", "FAIL_CLOSE", deadline="5s"),
        ext_proc=ExtProc(failure_mode_allow=failure_mode_allow, message_timeout="0.2s"),
    )
    finished = counters.streams_finished
    started = time.monotonic()
    resp = s.get("/")
    assert resp.status_code == status
    assert time.monotonic() - started < 3
    stats = s.envoy.ext_proc_stats()
    assert stats["message_timeouts"] == 1
    # Envoy resets the stream; the hung hook is cancelled and the stream released.
    give_up = time.monotonic() + 5
    while counters.streams_finished == finished and time.monotonic() < give_up:
        time.sleep(0.02)
    assert counters.streams_finished > finished
    assert s.server.server.chain.in_flight == 0


def test_deadline_answers_before_envoy_gives_up(stack: StackFactory) -> None:
    """With no plugin timeout, the server deadline (below message_timeout) still answers."""
    s = stack(
        chain("Hanger", "FAIL_OPEN", deadline="100ms"), ext_proc=ExtProc(message_timeout="0.5s")
    )
    resp = s.get("/")
    assert resp.status_code == 200
    assert s.seen("a").header("x-after") == "ran"
    assert s.envoy.ext_proc_stats()["message_timeouts"] == 0
