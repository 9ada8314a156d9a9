"""Exchanges end without a reset: with the project's Envoy config (runtime
ext_proc_graceful_grpc_close) Envoy half-closes a finished ext_proc stream and waits for
asm-proxy's status. A reset call is what grpc.aio leaks memory on (grpc/grpc#43360: a worker
grew up to ~140 bytes a request). Envoy counts the resets it sends (http2.tx_reset); grpc.aio
hides most of them from the server (a status that cannot be sent after a reset is dropped
silently), so the test reads Envoy's count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.load import Load
from tests.reliability.soak import SOAK_CONFIG
from tests.reliability.stack import Front
from tests.support.workers import SupervisorThread

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful-close", "envoy-default"])
def test_envoy_ends_streams_without_resetting_them(graceful: bool, tmp_path: Path) -> None:
    config = tmp_path / "asm.yaml"
    config.write_text(SOAK_CONFIG)  # a request and a response plugin: Envoy ends the stream
    supervisor = SupervisorThread(config, listen=f"unix:{tmp_path}/asm.sock", workers=1)
    try:
        front = Front(tmp_path, supervisor.addresses, {"runtime_flags": graceful})
        try:
            result = (
                Load(front.url, rate=200, connections=4, limit=300, seconds=10).start().finish()
            )
            stat = "cluster.asm_proxy.http2.tx_reset"
            reset = front.envoy.stats(stat).get(stat, 0)
        finally:
            front.close()
    finally:
        supervisor.stop()
    assert result.total == 300 and result.failed == [], result.summary()
    if graceful:
        assert reset == 0
    else:  # what the fix changed: Envoy resets nearly every stream
        assert reset > 250, reset
