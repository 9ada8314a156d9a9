"""Every body mode, both directions, through real Envoy: what the upstream and client get."""

from __future__ import annotations

import pytest

from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.upstream import _pattern
from tests.integration.conftest import StackFactory

WHOLE = """
modeOverride: {override}
plugins:
  - {{name: upper, type: 'tests.support.plugins:UpperBody'}}
"""
CHUNKS = """
modeOverride: {override}
plugins:
  - {{name: chunks, type: 'tests.support.plugins:ChunkUpper'}}
"""

REQUEST = _pattern(100_000)  # several chunks on the way in
RESPONSE_SIZE = 70_000


def ext_proc_for(mode: str, **kw) -> ExtProc:
    trailers = "SEND" if mode == "FULL_DUPLEX_STREAMED" else "SKIP"
    return ExtProc(
        request_body_mode=mode,
        response_body_mode=mode,
        request_trailer_mode=trailers,
        response_trailer_mode=trailers,
        **kw,
    )


def exchange(s):
    resp = s.post(
        "/",
        content=REQUEST,
        headers={"x-echo-body-bytes": str(RESPONSE_SIZE), "x-echo-chunked": "1"},
    )
    return resp, s.seen("a")


@pytest.mark.parametrize("mode", ["BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"])
def test_whole_body_rewrite(stack: StackFactory, mode: str) -> None:
    """A whole-body plugin rewrites both bodies in every mode that can hold a body."""
    s = stack(WHOLE.format(override="false"), ext_proc=ext_proc_for(mode))
    resp, seen = exchange(s)
    assert resp.status_code == 200
    assert seen.body == REQUEST.upper()
    assert resp.content == _pattern(RESPONSE_SIZE).upper()
    if mode == "BUFFERED":
        assert seen.header("content-length") == str(len(REQUEST))  # fixed by asm-proxy
    seen_by_plugin = s.plugin("upper").seen
    assert ("request", len(REQUEST), True) in [(d, n, c) for d, n, _, c in seen_by_plugin]


def test_whole_body_under_streaming_only_observes(stack: StackFactory) -> None:
    """Envoy streaming and not told otherwise: bodies pass unchanged, the plugin still
    sees each complete body once."""
    s = stack(WHOLE.format(override="false"), ext_proc=ext_proc_for("STREAMED"))
    resp, seen = exchange(s)
    assert seen.body == REQUEST
    assert resp.content == _pattern(RESPONSE_SIZE)
    assert [(d, n, c) for d, n, _, c in s.plugin("upper").seen] == [
        ("request", len(REQUEST), True),
        ("response", RESPONSE_SIZE, True),
    ]


@pytest.mark.parametrize(
    "mode", ["STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"]
)
def test_chunk_rewrite(stack: StackFactory, mode: str) -> None:
    """A chunk plugin rewrites both bodies in every mode."""
    s = stack(CHUNKS.format(override="false"), ext_proc=ext_proc_for(mode))
    resp, seen = exchange(s)
    assert seen.body == REQUEST.upper()
    assert resp.content == _pattern(RESPONSE_SIZE).upper()
    plugin = s.plugin("chunks")
    assert plugin.bytes["request"] == len(REQUEST)
    assert plugin.bytes["response"] == RESPONSE_SIZE


def test_partial_buffer_past_the_limit(stack: StackFactory) -> None:
    """BUFFERED_PARTIAL with a body over Envoy's buffer: the plugin sees an incomplete
    prefix and the whole body still reaches the upstream unchanged."""
    s = stack(WHOLE.format(override="false"), ext_proc=ext_proc_for("BUFFERED_PARTIAL"))
    big = _pattern(3 * 1024 * 1024)
    resp = s.post("/", content=big)
    assert resp.status_code == 200
    assert s.seen("a").body == big
    direction, size, _, complete = s.plugin("upper").seen[0]
    assert (direction, complete) == ("request", False)
    assert 0 < size < len(big)


def test_phases_on_demand_buffer_for_whole_body_plugins(stack: StackFactory) -> None:
    """Default settings: Envoy is configured to send no bodies, asm-proxy asks for them
    (mode_override) only because the plugin needs them."""
    s = stack(WHOLE.format(override="true"), ext_proc=ExtProc())
    resp, seen = exchange(s)
    assert seen.body == REQUEST.upper()
    assert resp.content == _pattern(RESPONSE_SIZE).upper()


def test_send_body_without_waiting(stack: StackFactory) -> None:
    """send_body_without_waiting_for_header_response: bodies stream in before the header
    reply; chunk rewriting still works."""
    s = stack(
        CHUNKS.format(override="true"),
        ext_proc=ext_proc_for("STREAMED", send_body_without_waiting_for_header_response=True),
    )
    resp, seen = exchange(s)
    assert seen.body == REQUEST.upper()
    assert resp.content == _pattern(RESPONSE_SIZE).upper()


def test_empty_and_bodyless(stack: StackFactory) -> None:
    """GETs and empty POSTs pass; a whole-body plugin sees an empty complete body."""
    s = stack(WHOLE.format(override="true"))
    assert s.get("/").status_code == 200
    resp = s.post("/", content=b"", headers={"x-echo-body": ""})
    assert resp.status_code == 200
