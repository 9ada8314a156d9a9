"""Waiting for a condition in a test: polled, bounded, and failing with what was awaited
(the machines are shared, so a fixed sleep is either too short or wasted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T], what: str = "condition", limit: float = 30.0, interval: float = 0.05
) -> T:
    """The first truthy value `check()` returns; AssertionError after `limit` seconds."""
    give_up = time.monotonic() + limit
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)
