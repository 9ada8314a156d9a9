"""Load generators: wrk (the benchmark's), and a small asyncio client (the smoke test's).

wrk is C, event-driven and cheap per request, so at these rates it takes a small, steady
share of the two cores and is never the bottleneck; it is Debian's package `wrk`
(`scripts/perf` installs it). The Python client needs nothing installed but costs about as
much CPU per request as the things measured, so its numbers are not comparable to wrk's:
`--quick` uses it when wrk is missing, to prove the suite runs, not to measure.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    """One kind of request the load generator repeats."""

    name: str
    method: str = "GET"
    path: str = "/"
    body_bytes: int = 0
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        if not self.body_bytes:
            return b""
        if self.content_type == "application/json":
            unit = b'{"id":12345,"name":"item","tags":["a","b"],"price":9.99},'
            items = (unit * (self.body_bytes // len(unit) + 1))[: self.body_bytes - 2]
            return b"[" + items.rstrip(b",").ljust(self.body_bytes - 2, b" ") + b"]"
        unit = b"The quick brown fox jumps over the lazy dog 0123456789\n"
        return (unit * (self.body_bytes // len(unit) + 1))[: self.body_bytes]

    def all_headers(self) -> list[tuple[str, str]]:
        headers = list(self.headers)
        if self.body_bytes:
            headers.append(("content-type", self.content_type))
        return headers


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int  # socket errors, timeouts and non-2xx answers
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _lua(shape: Shape, workdir: Path) -> Path:
    body_file = workdir / f"{shape.name}.body"
    body_file.write_bytes(shape.body())
    lines = [f'wrk.method = "{shape.method}"']
    for key, value in shape.all_headers():
        lines.append(f'wrk.headers["{key}"] = "{value}"')
    if shape.body_bytes:
        lines += [
            f'local f = assert(io.open("{body_file}", "rb"))',
            "wrk.body = f:read('*a')",
            "f:close()",
        ]
    script = workdir / f"{shape.name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Requests, duration, errors and the 50th/99th latency percentiles from `wrk --latency`."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (done and p50 and p99):
        raise ValueError(f"cannot read wrk's output:\n{output}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(
        tool="wrk",
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        errors=errors,
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
    )


def run_wrk(
    url: str, shape: Shape, *, connections: int, threads: int, seconds: float, workdir: Path
) -> LoadResult:
    script = _lua(shape, workdir)
    cmd = [
        wrk_path() or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url + shape.path,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------------------
# The Python client: HTTP/1.1 keep-alive, `connections` at once, bounded in time and count.


async def _one_connection(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            else:  # chunked
                while True:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            latencies.append(time.perf_counter() - start)
            if not 200 <= status < 400:
                errors[0] += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        errors[0] += 1
    finally:
        writer.close()


def run_python(
    url: str, shape: Shape, *, connections: int, seconds: float, max_requests: int = 200_000
) -> LoadResult:
    host, _, port = url.removeprefix("http://").partition(":")
    body = shape.body()
    head = [f"{shape.method} {shape.path} HTTP/1.1", f"host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in shape.all_headers()]
    head.append(f"content-length: {len(body)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = [0]
    budget = [max_requests]

    async def main() -> float:
        start = time.monotonic()
        stop_at = start + seconds
        await asyncio.gather(
            *(
                _one_connection(host, int(port), request, stop_at, budget, latencies, errors)
                for _ in range(connections)
            )
        )
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    ordered = sorted(latencies) or [0.0]
    return LoadResult(
        tool="python",
        requests=len(latencies),
        seconds=elapsed,
        errors=errors[0],
        p50_ms=ordered[len(ordered) // 2] * 1000,
        p99_ms=ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1000,
    )
