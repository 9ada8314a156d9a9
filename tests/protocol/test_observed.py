"""What metrics (and traces) are told about each call, on every transport: services.py and
authz.judge tell the stream observers, so no transport can leave them out.

Each ext_proc stream ends one way (`StreamEnd`): complete, closed early, the client's
protocol error, asm-proxy's internal error, or cancelled by a client reset while a message
was being answered (a reset while asm-proxy waits for the next message is complete:
nothing was left unanswered). Each ext_authz check is allowed or denied, over gRPC and, on
the nghttp2 transport, over HTTP/1.1. Read here off the server's real metrics.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from asm_proxy.metrics.serving import families
from asm_proxy.observe import EXT_AUTHZ, EXT_PROC, StreamEnd
from asm_proxy.stats import message_kinds
from asm_proxy.testing import messages
from asm_proxy.wire import (
    CHECK_METHOD,
    PROCESS_METHOD,
    CheckRequest,
    ProcessingRequest,
    check_stub,
    process_stub,
)
from tests.support.background import ServerThread
from tests.support.waiting import wait_for

CONFIG = """
deadline: 2s
plugins:
  - name: gate
    type: 'tests.support.plugins:Gate'
    phase: AUTHN
    match: [{paths: [{prefix: /gate}]}]
  - {name: every, type: 'tests.support.plugins:Recorder', match: [{paths: [{prefix: /every}]}]}
  - name: slow
    type: 'tests.support.plugins:SlowTag'
    config: {delay_ms: 400}
    match: [{paths: [{prefix: /slow}]}]
  - {name: bad, type: 'tests.support.plugins:BadMetadata', match: [{paths: [{prefix: /bad}]}]}
"""
GARBAGE = b"\xff\xff\xff\xff garbage"
PROCESS_ENDS = (
    StreamEnd.COMPLETE,
    StreamEnd.CLOSED_EARLY,
    StreamEnd.PROTOCOL_ERROR,
    StreamEnd.INTERNAL_ERROR,
    StreamEnd.CANCELLED,
)


@pytest.fixture
def server(tmp_path: Path, transport: str) -> Iterator[ServerThread]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    thread = ServerThread(path, transport=transport)
    yield thread
    thread.stop()


def ended(service: str, end: StreamEnd) -> float:
    return families().end_cells[service, end].value


def immediate(service: str, status: int) -> float:
    return families().immediate.cell((service, str(status))).value


def held_open(first: ProcessingRequest) -> tuple[queue.Queue[ProcessingRequest | None], Iterator]:
    """Requests that keep the client's side open until None is put."""
    pending: queue.Queue[ProcessingRequest | None] = queue.Queue()
    pending.put(first)

    def requests() -> Iterator[ProcessingRequest]:
        while (item := pending.get()) is not None:
            yield item

    return pending, requests()


def test_each_way_an_ext_proc_stream_ends(server: ServerThread) -> None:
    counts = {end: ended(EXT_PROC, end) for end in PROCESS_ENDS}
    headers_before = message_kinds["request_headers"]
    gate_401 = immediate(EXT_PROC, 401)
    with grpc.insecure_channel(server.address) as channel:
        process = process_stub(channel)
        # Complete: the client ends its side, every message answered.
        replies = list(process(iter([messages.request_headers({":path": "/every"}, True)])))
        assert len(replies) == 1
        # Closed early: an immediate response needs nothing more of the exchange.
        (reply,) = process(iter([messages.request_headers({":path": "/gate"}, True)]), timeout=5)
        assert reply.immediate_response.status.code == 401
        # The client's protocol error: bytes that are not a ProcessingRequest.
        with pytest.raises(grpc.RpcError) as info:
            list(channel.stream_stream(PROCESS_METHOD)(iter([GARBAGE]), timeout=5))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # asm-proxy's own fault.
        with pytest.raises(grpc.RpcError) as info:
            list(process(iter([messages.request_headers({":path": "/bad"}, True)]), timeout=5))
        assert info.value.code() is grpc.StatusCode.INTERNAL
        # Reset while asm-proxy waits for the next message (what Envoy does to a stream it
        # needs no more): complete.
        pending, requests = held_open(messages.request_headers({":path": "/every"}, False))
        call = process(requests)
        next(call)
        call.cancel()
        pending.put(None)
        # Reset while a message is being answered: cancelled (its answer is lost).
        seen = message_kinds["request_headers"]
        pending, requests = held_open(messages.request_headers({":path": "/slow"}, False))
        call = process(requests)
        # Counted as it arrives, then straight into the hook (400 ms).
        wait_for(lambda: message_kinds["request_headers"] > seen, "the slow message")
        call.cancel()
        pending.put(None)

    def grew(end: StreamEnd) -> float:
        return ended(EXT_PROC, end) - counts[end]

    wait_for(lambda: grew(StreamEnd.CANCELLED) == 1, "the cancelled stream")
    wait_for(lambda: grew(StreamEnd.COMPLETE) == 2, "the reset stream")
    assert {end: grew(end) for end in PROCESS_ENDS} == {
        StreamEnd.COMPLETE: 2,
        StreamEnd.CLOSED_EARLY: 1,
        StreamEnd.PROTOCOL_ERROR: 1,
        StreamEnd.INTERNAL_ERROR: 1,
        StreamEnd.CANCELLED: 1,
    }
    assert immediate(EXT_PROC, 401) == gate_401 + 1
    assert message_kinds["request_headers"] == headers_before + 5
    assert families().open_cells[EXT_PROC].value == 0


def check_request(path: str, allow: str | None) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", path, "example.com"
    if allow is not None:
        http.headers["x-allow"] = allow
    return request


def test_ext_authz_checks_by_result(server: ServerThread, transport: str) -> None:
    allowed, denied = ended(EXT_AUTHZ, StreamEnd.ALLOWED), ended(EXT_AUTHZ, StreamEnd.DENIED)
    refused = immediate(EXT_AUTHZ, 403), immediate(EXT_AUTHZ, 401)
    with grpc.insecure_channel(server.address) as channel:
        check = check_stub(channel)
        assert check(check_request("/gate", "yes"), timeout=5).status.code == 0
        assert check(check_request("/gate", "no"), timeout=5).denied_response.status.code == 403
        # Not a CheckRequest: refused before any check starts.
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(CHECK_METHOD)(GARBAGE, timeout=5)
    expected = 1
    if transport == "nghttp2":  # ext_authz over HTTP/1.1 on the same address
        base = f"http://{server.address}/ext_authz/gate"
        assert httpx.get(base, headers={"x-allow": "yes"}, timeout=5).status_code == 200
        assert httpx.get(base, timeout=5).status_code == 401
        expected = 2
    assert ended(EXT_AUTHZ, StreamEnd.ALLOWED) == allowed + expected
    assert ended(EXT_AUTHZ, StreamEnd.DENIED) == denied + expected
    assert immediate(EXT_AUTHZ, 403) == refused[0] + 1
    assert immediate(EXT_AUTHZ, 401) == refused[1] + expected - 1
    assert families().open_cells[EXT_AUTHZ].value == 0
