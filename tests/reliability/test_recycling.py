"""Workers recycled under load lose nothing: the replacement serves before the old worker
stops taking streams (a Unix socket path is taken over by a rename, a TCP port is shared),
and the old one finishes what it has in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.drills import recycling_under_load

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_recycling_after_a_stream_count_loses_nothing(transport: str, tmp_path: Path) -> None:
    """maxStreamsPerWorker 1000 at 400 requests/s over two workers: each is recycled about
    every five seconds."""
    result = recycling_under_load(tmp_path, transport=transport, seconds=8, rate=400)
    assert result.recycles >= 2, result
    assert result.requests > 3000, result
    assert result.failed == 0, result


def test_recycling_above_an_rss_limit_loses_nothing(tmp_path: Path) -> None:
    """A plugin that keeps 256 KiB a request pushes its worker past maxWorkerRss 128Mi in a
    few hundred requests; the replacement starts small."""
    hoard = """  - name: hoard
    type: 'tests.support.plugins:Hoard'
"""
    result = recycling_under_load(
        tmp_path,
        transport="unix",
        seconds=8,
        rate=200,
        trigger="maxWorkerRss: 128Mi",
        plugins=hoard,
    )
    assert result.recycles >= 2, result
    assert result.failed == 0, result
