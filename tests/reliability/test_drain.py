"""Two asm-proxy instances behind one Envoy with the project's Envoy config: SIGTERM one
under load and no request fails (health checks move Envoy away during drainDelay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.drills import drain_one_of_two

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_one_of_two_instances_loses_nothing(transport: str, tmp_path: Path) -> None:
    result = drain_one_of_two(
        tmp_path, transport=transport, rate=150, connections=6, workers=1, after=1.0
    )
    assert result.after_sigterm > 200, result  # the load really ran through the drain
    assert result.failed == 0, result
    assert result.drain_seconds < 10, result  # drainDelay 1 s, then nothing in flight
