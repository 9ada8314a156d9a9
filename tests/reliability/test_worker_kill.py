"""A worker killed under load costs only the streams it had in flight, on both kinds of
socket and both transports (the load has 8 connections, so at most 8 requests are ever in
flight). On a Unix socket the dead worker's path refuses connections until its replacement
takes it over, and Envoy's retry policy and outlier detection send those streams elsewhere
(the nghttp2 transport too: with two workers the supervisor does not hold their sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.drills import worker_kills

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize(
    ("transport", "server"),
    [("unix", None), ("tcp", None), ("unix", "grpcio")],
    ids=["unix", "tcp", "unix-grpcio"],
)
def test_a_worker_kill_costs_only_its_streams_in_flight(
    transport: str, server: str | None, tmp_path: Path
) -> None:
    """`transport` is the socket kind; `server` asm-proxy's transport (None: the default,
    nghttp2)."""
    result = worker_kills(tmp_path, transport=transport, kills=2, every=1.5, server=server)
    assert len(result.failed_per_kill) == 2 and len(result.restart_ms) == 2, result
    assert result.max_failed <= 8, result
