"""A worker killed under load costs only the streams it had in flight, on both transports
(the load has 8 connections, so at most 8 requests are ever in flight). On a Unix socket
the dead worker's path refuses connections until its replacement binds it; Envoy's retry
policy and outlier detection send those streams elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.drills import PASS_THROUGH, worker_kills
from tests.reliability.load import Load
from tests.reliability.stack import Front
from tests.support.workers import SupervisorThread

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_worker_kill_costs_only_its_streams_in_flight(transport: str, tmp_path: Path) -> None:
    result = worker_kills(tmp_path, transport=transport, kills=2, every=1.5)
    assert len(result.failed_per_kill) == 2 and len(result.restart_ms) == 2, result
    assert result.max_failed <= 8, result


def test_tcp_load_spreads_over_workers(tmp_path: Path) -> None:
    """At a moderate load (8 connections, 200 requests/s: Envoy needs one connection to
    asm-proxy) both TCP workers serve, because each connection ends after 100 streams and
    the next may land on the other worker."""
    (tmp_path / "asm.yaml").write_text(PASS_THROUGH)
    supervisor = SupervisorThread(tmp_path / "asm.yaml", listen="127.0.0.1:0", workers=2)
    try:
        front = Front(tmp_path, supervisor.addresses[:1])
        try:
            result = Load(front.url, rate=200, connections=8, seconds=8).start().finish()
        finally:
            front.close()
        streams = supervisor.streams_by_worker()
    finally:
        supervisor.stop()
    assert result.failed == [], result.summary()
    total = sum(streams.values())
    assert total >= 1500, streams
    assert min(streams.values()) >= 0.05 * total, streams
