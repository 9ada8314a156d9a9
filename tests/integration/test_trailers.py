"""Trailers both ways through real Envoy (HTTP/1.1 chunked with trailers on both sides)."""

from __future__ import annotations

import pytest

from asm_proxy.envoy_bootstrap import ExtProc
from tests.integration.conftest import StackFactory
from tests.support import http1

CONFIG = """
plugins:
  - {name: trailers, type: 'tests.support.plugins:TrailerTouch'}
"""


@pytest.mark.parametrize("static_trailers", ["SKIP", "SEND"])
def test_trailers_both_directions(stack: StackFactory, static_trailers: str) -> None:
    """Plugins read and add trailers; with Envoy's trailer mode SKIP, asm-proxy asks for
    them (mode_override) because a plugin has trailer hooks."""
    s = stack(
        CONFIG,
        ext_proc=ExtProc(
            request_trailer_mode=static_trailers, response_trailer_mode=static_trailers
        ),
    )
    reply = http1.request(
        s.envoy.port,
        "POST",
        "/",
        headers=[("x-echo-trailer", "x-up=1")],
        chunks=[b"hello ", b"world"],
        trailers=[("x-client-trailer", "a")],
    )
    assert reply.status == 200
    seen = s.seen("a")
    assert seen.body == b"hello world"
    assert dict(seen.trailers) == {"x-client-trailer": "a", "x-trailer-seen": "1"}
    assert reply.trailers == {"x-up": "1", "x-trailer-seen": "1"}


def test_trailer_hooks_not_asked_without_plugins(stack: StackFactory) -> None:
    """A chain with no trailer hooks makes Envoy skip trailers even if configured to send."""
    s = stack(
        "plugins: [{name: h, type: headers, config: {request: {set: {x: y}}}}]",
        ext_proc=ExtProc(request_trailer_mode="SEND", response_trailer_mode="SEND"),
    )
    reply = http1.request(
        s.envoy.port,
        "POST",
        "/",
        headers=[("x-echo-trailer", "x-up=1")],
        chunks=[b"a"],
        trailers=[("x-t", "1")],
    )
    assert reply.trailers == {"x-up": "1"}
    assert s.envoy.ext_proc_stats()["stream_msgs_sent"] == 1
