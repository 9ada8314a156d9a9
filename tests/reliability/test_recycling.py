"""Workers recycled under load lose nothing: the replacement serves before the old worker
stops taking streams (a Unix socket path is taken over by a rename, a TCP port is shared),
and the old one finishes what it has in flight."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asm_proxy.stats import counters
from asm_proxy.supervisor import RECYCLE_CHECK
from tests.reliability.drills import recycling_under_load
from tests.reliability.stack import wait_for
from tests.support.workers import SupervisorThread

pytestmark = pytest.mark.envoy


#: maxStreamsPerWorker 1000 over two workers: each passes it about halfway through, and the
#: supervisor (checking every 2 s) recycles it while the rest of the load runs.
STREAM_LIMIT_REQUESTS = 4000


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_recycling_after_a_stream_count_loses_nothing(
    transport: str, tmp_path: Path, figures: Callable[[Any], Path]
) -> None:
    """maxStreamsPerWorker 1000, 4,000 requests at 400 a second over two workers: every
    request answered 200 across the recycles."""
    result = recycling_under_load(
        tmp_path, transport=transport, requests=STREAM_LIMIT_REQUESTS, rate=400
    )
    figures(result)
    assert result.recycles >= 1, result
    assert result.requests == STREAM_LIMIT_REQUESTS, result
    assert result.failed == 0, result


def test_recycling_above_an_rss_limit_loses_nothing(
    tmp_path: Path, figures: Callable[[Any], Path]
) -> None:
    """A plugin that keeps 256 KiB a request pushes its worker past maxWorkerRss 128Mi in a
    few hundred requests; the replacement starts small."""
    hoard = """  - name: hoard
    type: 'tests.support.plugins:Hoard'
"""
    result = recycling_under_load(
        tmp_path,
        transport="unix",
        requests=1600,
        rate=200,
        trigger="maxWorkerRss: 128Mi",
        plugins=hoard,
    )
    figures(result)
    assert result.recycles >= 1, result
    assert result.requests == 1600, result
    assert result.failed == 0, result


def test_an_rss_limit_below_a_fresh_worker_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers that hold 150 MiB from the start and maxWorkerRss 128Mi: one recycle shows a
    fresh worker is over the limit too; that is said once, and recycling on memory stops
    (instead of replacing every worker every two seconds)."""
    config = tmp_path / "asm.yaml"
    config.write_text(
        "reloadInterval: 0s\nmaxWorkerRss: 128Mi\nplugins:\n"
        "  - {name: ballast, type: 'tests.support.plugins:Ballast', config: {mib: 150}}\n"
    )
    before = counters.worker_recycles
    with caplog.at_level(logging.INFO, "asm_proxy.supervisor"):
        supervisor = SupervisorThread(config, listen=f"unix:{tmp_path}/asm.sock", workers=2)
        try:
            wait_for(lambda: "not recycling on memory" in caplog.text, "the warning", 30)
            time.sleep(2 * RECYCLE_CHECK + 1)  # two more checks: no more recycling
        finally:
            supervisor.stop()
    assert counters.worker_recycles == before + 1
    assert caplog.text.count("not recycling on memory until the limit is raised") == 1
