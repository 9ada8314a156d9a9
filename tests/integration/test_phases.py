"""Phases on demand (mode_override) and observability mode, seen from Envoy's own stats."""

from __future__ import annotations

from asm_proxy.envoy_bootstrap import ExtProc
from tests.integration.conftest import StackFactory

HEADER_ONLY = """
modeOverride: {override}
plugins:
  - {{name: tag, type: headers, config: {{request: {{set: {{x-tag: '1'}}}}}}}}
"""
EVERYTHING = ExtProc(
    request_body_mode="BUFFERED",
    response_body_mode="BUFFERED",
    request_trailer_mode="SEND",
    response_trailer_mode="SEND",
)


def run(s, n: int = 5) -> dict[str, int]:
    for _ in range(n):
        resp = s.post("/", content=b"x" * 1000)
        assert resp.status_code == 200
        assert s.seen("a").header("x-tag") == "1"
    return s.envoy.ext_proc_stats()


def test_header_only_chain_pays_for_headers_only(stack: StackFactory) -> None:
    """Envoy configured to send every phase; the chain needs request headers only, so
    after the first reply Envoy sends nothing more: one message per request."""
    stats = run(stack(HEADER_ONLY.format(override="true"), ext_proc=EVERYTHING))
    assert stats["stream_msgs_sent"] == 5
    assert stats["streams_started"] == 5


def test_without_mode_override_every_phase_is_sent(stack: StackFactory) -> None:
    """The same chain with modeOverride off: Envoy sends all four phases of each POST."""
    stats = run(stack(HEADER_ONLY.format(override="false"), ext_proc=EVERYTHING))
    assert stats["stream_msgs_sent"] == 20


def test_observability_mode(stack: StackFactory) -> None:
    """Envoy's observability mode: plugins see the traffic, nothing is changed or waited for."""
    s = stack(
        "plugins: [{name: rec, type: 'tests.support.plugins:Recorder'},"
        " {name: tag, type: headers, config: {request: {set: {x-tag: '1'}}}}]",
        ext_proc=ExtProc(
            observability_mode=True, request_body_mode="STREAMED", response_body_mode="STREAMED"
        ),
    )
    resp = s.post("/", content=b"hello")
    assert resp.status_code == 200
    assert s.seen("a").header("x-tag") is None  # mutations are not applied
    import time

    give_up = time.monotonic() + 5
    calls = s.plugin("rec").calls
    while calls["response_headers"] < 1 and time.monotonic() < give_up:
        time.sleep(0.02)
    assert calls["request_headers"] == 1 and calls["response_headers"] == 1
