"""On TCP the workers share one port and the kernel spreads connections, not streams: the
project's Envoy config makes the streams spread too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.drills import tcp_spread

pytestmark = pytest.mark.envoy

REQUESTS = 1600


def test_tcp_load_spreads_over_workers(tmp_path: Path, figures: Callable[[Any], Path]) -> None:
    """At a moderate load (8 connections, 200 requests/s: Envoy needs one connection to
    asm-proxy) both TCP workers serve, because each connection ends after 100 streams and
    the next may land on the other worker. (max_concurrent_streams 8, the old advice, left
    every stream on one worker.)"""
    result = tcp_spread(tmp_path, requests=REQUESTS, window=REQUESTS / 200)
    figures(result)
    assert result.requests == REQUESTS and result.failed == 0, result
    assert sum(result.total) == REQUESTS, result  # one stream a request, each counted once
    assert min(result.total) >= 0.05 * REQUESTS, result
