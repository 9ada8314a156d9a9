"""What a server costs, read from /proc: CPU time over a window, and memory per open stream.

CPU is utime + stime of every process of the server (all workers, and whatever they
started, such as offload processes), so a multi-process server is charged in full.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf.load import Shape

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found = [pid]
    i = 0
    while i < len(found):
        task_dir = Path(f"/proc/{found[i]}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            tasks = []
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            found += [int(c) for c in children if int(c) not in found]
        i += 1
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """Total user + system CPU of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


@dataclass
class CpuWindow:
    """CPU seconds used by a set of processes between `start()` and `stop()`."""

    roots: list[int]
    _pids: list[int] | None = None
    _start: float = 0.0
    seconds: float = 0.0

    def start(self) -> None:
        self._pids = [p for root in self.roots for p in descendants(root)]
        self._start = cpu_seconds(self._pids)

    def stop(self) -> float:
        assert self._pids is not None
        pids = [p for root in self.roots for p in descendants(root)]
        # A process that appeared during the window is counted from zero.
        self.seconds = cpu_seconds(pids) - self._start
        return self.seconds


# --------------------------------------------------------------------------------------
# Memory per open stream: hold many ext_proc streams open, each past its request headers
# (as for a request whose body is still coming), and compare the servers' RSS.


def _headers_message(i: int, shape: Shape) -> object:
    """The request headers Envoy would send for one request of `shape`."""
    from asm_proxy.testing import messages

    headers = [
        (":method", shape.method),
        (":path", shape.path),
        (":authority", "bench.local"),
        (":scheme", "http"),
        *shape.all_headers(),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-request-id", f"5f0c6b1e-9a1d-4f43-8d0e-{i:012d}"),
        ("x-forwarded-proto", "http"),
    ]
    if shape.body_bytes:
        headers.append(("content-length", str(shape.body_bytes)))
    return messages.request_headers(headers, end_of_stream=not shape.body_bytes)


WARM_STREAMS = 20
RSS_STEPS = 4


async def _hold_streams(
    address: str, count: int, roots: list[int], shape: Shape
) -> tuple[list[tuple[int, int]], int]:
    """RSS at 0, count/RSS_STEPS, ... count open streams, and how many stayed open."""
    import grpc

    from asm_proxy.wire import process_stub

    async with grpc.aio.insecure_channel(address) as channel:
        process = process_stub(channel)
        calls: list[Any] = []

        async def open_streams(n: int) -> None:
            fresh = []
            for i in range(n):
                call = process()
                await call.write(_headers_message(len(calls) + i, shape))
                fresh.append(call)
            for call in fresh:
                await call.read()  # the headers' answer: the server holds the stream now
            calls.extend(fresh)
            await asyncio.sleep(0.1)  # streams the server ends after one answer end now

        pids = [p for root in roots for p in descendants(root)]
        try:
            # A few streams first, so one-time work (first-use imports, caches, the
            # channel) is not charged to the measured ones.
            await open_streams(WARM_STREAMS)
            for call in calls:
                call.cancel()
            calls.clear()
            await asyncio.sleep(0.1)
            points = [(0, rss_bytes(pids))]
            for _ in range(RSS_STEPS):
                await open_streams(count // RSS_STEPS)
                points.append((len(calls), rss_bytes(pids)))
            still_open = sum(1 for call in calls if not call.done())
        finally:
            for call in calls:
                call.cancel()
        return points, still_open


def rss_per_stream(address: str, roots: list[int], count: int, shape: Shape) -> float | None:
    """Bytes of server RSS per open stream: the slope of RSS against the number of open
    streams, each past the request headers of a `shape` request whose body or response is
    still to come, measured at RSS_STEPS + 1 points up to `count`. A slope rather than one
    difference: the allocator grows RSS in steps, so (after - before) / count over few
    streams (--quick opens 50) moves with where the steps fall. Everything the streams
    made the server allocate counts. None if the server ends such streams
    after answering the headers (a chain that needs nothing more): no stream to weigh."""
    points, still_open = asyncio.run(_hold_streams(address, count, roots, shape))
    if still_open < points[-1][0]:
        return None
    slope, _ = statistics.linear_regression([n for n, _ in points], [r for _, r in points])
    return max(0.0, slope)
