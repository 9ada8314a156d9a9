"""Two asm-proxy instances behind one Envoy with the project's Envoy config: SIGTERM one
under load and no request fails (health checks move Envoy away during drainDelay)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.drills import drain_one_of_two

pytestmark = pytest.mark.envoy

#: Requests started after the drained instance exited: the other one carries them all.
AFTER = 150


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_one_of_two_instances_loses_nothing(
    transport: str, tmp_path: Path, figures: Callable[[Any], Path]
) -> None:
    result = drain_one_of_two(
        tmp_path, transport=transport, rate=150, connections=6, workers=1, after=AFTER
    )
    figures(result)  # how long the drain took, the load's rate: measured, not judged
    # Both instances carried streams before the fault: the drain had traffic to move.
    assert all(n > 0 for n in result.streams_before.values()), result
    # It drained and exited cleanly within what asm-proxy promises (drainDelay +
    # drainTimeout); the load ran through the drain and on after the exit...
    assert result.exit_code == 0, result
    assert result.during_drain > 0, result
    assert result.after_exit >= AFTER, result
    # ...and not one request failed, during or after.
    assert result.failed == 0 and result.failed_before == 0, result
