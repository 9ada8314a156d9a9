"""Paced load through Envoy that remembers every request's outcome.

The drills count what a fault costs: requests failed while a worker is killed, a reload
lands, an instance drains. So the load is open-ish (a fixed rate, not "as fast as
possible": a fault must not slow the load down and hide its own cost), runs on its own
thread and event loop, is bounded in time and count, and records each request's start,
end and status (0 for a connection error or timeout).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: One request may take this long before it counts as failed (status 0).
REQUEST_TIMEOUT = 5.0
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@dataclass(frozen=True, slots=True)
class Outcome:
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no HTTP answer (connection refused/reset, timeout)
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    ok_statuses: frozenset[int]
    seconds: float

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in self.ok_statuses]

    @property
    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def between(self, start: float, end: float) -> list[Outcome]:
        """Requests that started in [start, end)."""
        return [o for o in self.outcomes if start <= o.start < end]

    def summary(self) -> str:
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.total} requests in {self.seconds:.1f}s ({self.rate:.0f}/s); {shown}"


@dataclass
class _Conn:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    outcomes: list[Outcome] = field(default_factory=list)


class Load:
    """`rate` requests a second over `connections` HTTP/1.1 keep-alive connections to
    `url`, until `stop()`, `seconds` or `limit` requests. Statuses in `ok` are successes."""

    def __init__(
        self,
        url: str,
        *,
        rate: float = 200.0,
        connections: int = 8,
        seconds: float = 60.0,
        limit: int = 1_000_000,
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        ok: Iterable[int] = (200,),
    ) -> None:
        host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
        self.host, self.port = host, int(port)
        self.rate, self.connections = rate, connections
        self.seconds, self.limit = seconds, limit
        self.ok = frozenset(ok)
        head = [f"GET {path} HTTP/1.1", f"host: {host}:{port}"]
        head += [f"{k}: {v}" for k, v in headers]
        self._request = ("\r\n".join(head) + "\r\n\r\n").encode()
        self._stop = threading.Event()
        self._budget = limit
        self._conns = [_Conn() for _ in range(connections)]
        self._started = 0.0
        self._elapsed = 0.0
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    @classmethod
    def counted(
        cls, url: str, requests: int, *, rate: float, connections: int = 8, **kw: Any
    ) -> Load:
        """Exactly `requests` requests at `rate` a second: bounded by that count, and in
        time only far above what it needs (four times, plus 30 s), so a slow machine takes
        longer rather than sends fewer."""
        seconds = requests / rate * 4 + 30
        return cls(url, rate=rate, connections=connections, seconds=seconds, limit=requests, **kw)

    def start(self) -> Load:
        self._thread.start()
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def done(self) -> int:
        return sum(len(c.outcomes) for c in self._conns)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until `count` requests have finished (the load is under way)."""
        give_up = time.monotonic() + timeout
        while self.done < count:
            if time.monotonic() > give_up or not self._thread.is_alive():
                raise AssertionError(f"load: {self.done} of {count} requests after {timeout}s")
            time.sleep(0.01)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the load to run out; True once it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def finish(self) -> LoadResult:
        """Let the load run out its `seconds` (or `limit`), then the result."""
        self._thread.join(self.seconds + REQUEST_TIMEOUT + 10)
        return self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(self.seconds + REQUEST_TIMEOUT + 10)
        outcomes = sorted((o for c in self._conns for o in c.outcomes), key=lambda o: o.start)
        return LoadResult(outcomes, self.ok, self._elapsed)

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._started = time.monotonic()
        stop_at = self._started + self.seconds
        interval = self.connections / self.rate
        await asyncio.gather(
            *(
                self._connection(conn, self._started + i * interval / self.connections, stop_at)
                for i, conn in enumerate(self._conns)
            )
        )
        self._elapsed = time.monotonic() - self._started

    async def _connection(self, conn: _Conn, first: float, stop_at: float) -> None:
        interval = self.connections / self.rate
        due = first
        try:
            while not self._stop.is_set() and self._budget > 0:
                now = time.monotonic()
                if now >= stop_at:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                self._budget -= 1
                due = max(due + interval, time.monotonic())
                conn.outcomes.append(await self._one(conn))
        finally:
            if conn.writer is not None:
                conn.writer.close()

    async def _one(self, conn: _Conn) -> Outcome:
        start = time.monotonic()
        try:
            status = await asyncio.wait_for(self._exchange(conn), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            if conn.writer is not None:
                conn.writer.close()
            conn.reader = conn.writer = None
            return Outcome(start, time.monotonic(), 0, f"{type(exc).__name__}: {exc}")
        return Outcome(start, time.monotonic(), status)

    async def _exchange(self, conn: _Conn) -> int:
        if conn.writer is None:
            conn.reader, conn.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = conn.reader, conn.writer
        assert reader is not None
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = _LENGTH.search(head)
        if length:
            await reader.readexactly(int(length.group(1)))
        else:  # chunked
            while True:
                size = int((await reader.readline()).strip() or b"0", 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        if b"\r\nconnection: close" in head.lower():
            writer.close()
            conn.reader = conn.writer = None
        return status
