"""Bad clients over real gRPC: bytes that are not a message, messages out of order. Each
gets the client-fault status with the reason; the log gets a WARNING without a traceback, a
few a period and then one line counting the rest. asm-proxy's own faults are ERRORs with the
traceback, throttled the same way. On every transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asm_proxy import faults
from asm_proxy.stats import counters
from asm_proxy.testing import messages
from asm_proxy.wire import process_stub
from tests.support.background import ServerThread

CONFIG = """
plugins:
  - {name: body, type: 'tests.support.plugins:UpperBody', match: [{paths: [{prefix: /body}]}]}
  - {name: bad, type: 'tests.support.plugins:BadMetadata', match: [{paths: [{prefix: /bad}]}]}
"""
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
GARBAGE = b"\xff\xff\xff\xff garbage"


@pytest.fixture
def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> Iterator[ServerThread]:
    # Fresh throttles with a short period, so the test sees a whole period go by.
    monkeypatch.setattr(
        faults, "client", faults.Throttle(faults.log, logging.WARNING, "client faults", period=1.0)
    )
    monkeypatch.setattr(
        faults,
        "internal",
        faults.Throttle(faults.log, logging.ERROR, "internal errors", period=1.0),
    )
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    thread = ServerThread(path, transport=transport)
    yield thread
    thread.stop()


def raw_streams(address: str, payload: bytes, count: int) -> list[grpc.RpcError]:
    errors = []
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(PROCESS)  # bytes in, bytes out: no serializer
        for _ in range(count):
            with pytest.raises(grpc.RpcError) as info:
                list(call(iter([payload]), timeout=5))
            errors.append(info.value)
    return errors


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "asm_proxy.server" and r.levelno >= logging.WARNING
    ]


def wait_for_summary(caplog: pytest.LogCaptureFixture, what: str) -> str:
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        for record in records(caplog):
            if f"more {what}" in record.getMessage():
                return record.getMessage()
        time.sleep(0.05)
    raise AssertionError(f"no summary of {what}: {[r.getMessage() for r in records(caplog)]}")


def test_garbage_on_a_stream(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    """50 streams of garbage: 50 INVALID_ARGUMENTs saying why; 5 WARNING lines without a
    traceback, then "45 more client faults ... suppressed"; the server serves on."""
    before = counters.client_faults
    with caplog.at_level(logging.INFO):
        errors = raw_streams(server.address, GARBAGE, 50)
        summary = wait_for_summary(caplog, "client faults")
    assert {e.code() for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert errors[0].details() == (
        "not an envoy.service.ext_proc.v3.ProcessingRequest: Wire format was corrupt"
    )
    lines = records(caplog)
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    refusals = [r.getMessage() for r in lines if "refused (client's fault" in r.getMessage()]
    assert len(refusals) == 5
    assert refusals[0].startswith("ext_proc stream refused (client's fault, from ipv4:127.0.0.1:")
    assert summary.startswith("45 more client faults in the last 1s (suppressed")
    assert counters.client_faults == before + 50
    with grpc.insecure_channel(server.address) as channel:
        replies = list(
            process_stub(channel)(iter([messages.request_headers({":path": "/"}, True)]), timeout=5)
        )
    assert len(replies) == 1


def test_garbage_check(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    """ext_authz Check with garbage: INVALID_ARGUMENT and a WARNING (grpc alone would say
    UNKNOWN and log an ERROR with a traceback)."""
    with (
        caplog.at_level(logging.INFO),
        grpc.insecure_channel(server.address) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary(CHECK)(GARBAGE, timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("not an envoy.service.auth.v3.CheckRequest: ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (line,) = records(caplog)
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert line.getMessage().startswith("ext_authz Check refused (client's fault, from ")


def test_protocol_misuse(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    """Messages out of order: FAILED_PRECONDITION saying which, a throttled WARNING."""
    twice = [messages.request_headers({":path": "/body"}, False)] * 2
    with caplog.at_level(logging.INFO), grpc.insecure_channel(server.address) as channel:
        process = process_stub(channel)
        for _ in range(8):
            with pytest.raises(grpc.RpcError) as info:
                list(process(iter(twice), timeout=5))
            assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "request_headers received after request headers" in info.value.details()
        summary = wait_for_summary(caplog, "client faults")
    assert summary.startswith("3 more client faults")
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records(caplog))


def test_own_fault_is_an_error_with_traceback(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in asm-proxy's own code (metadata no Struct can hold): INTERNAL for the
    client; ERROR with the traceback, 5 a period, then a count."""
    with caplog.at_level(logging.INFO), grpc.insecure_channel(server.address) as channel:
        process = process_stub(channel)
        for _ in range(7):
            with pytest.raises(grpc.RpcError) as info:
                list(process(iter([messages.request_headers({":path": "/bad"}, True)]), timeout=5))
            assert info.value.code() is grpc.StatusCode.INTERNAL
        summary = wait_for_summary(caplog, "internal errors")
    errors = [r for r in records(caplog) if "failed inside asm-proxy" in r.getMessage()]
    assert len(errors) == 5
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in errors)
    assert summary.startswith("2 more internal errors")
