"""The offload pool: inline below the threshold, shared memory above it, failures contained."""

from __future__ import annotations

import asyncio
import os
import signal
import zlib
from pathlib import Path

import pytest

from asm_proxy import offload as offload_module
from asm_proxy.body import Body, BodyBuffer
from asm_proxy.offload import OffloadError, OffloadPool, offload
from asm_proxy.stats import counters


def upper(data: memoryview, suffix: bytes = b"") -> bytes:
    return bytes(data).upper() + suffix


def checksum(data: memoryview) -> tuple[int, int, int]:
    return len(data), zlib.crc32(data), os.getpid()


def fail(data: memoryview) -> None:
    raise ValueError(f"no thanks ({len(data)} bytes)")


def hang_then_die(data: memoryview) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def slow(data: memoryview, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return len(data)


def segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


def test_small_work_runs_inline() -> None:
    """Below the threshold the function runs here, on the bytes as they are."""
    calls = counters.offloaded_calls
    result = asyncio.run(offload(checksum, b"abc", threshold=1024))
    assert result == (3, zlib.crc32(b"abc"), os.getpid())
    assert counters.offloaded_calls == calls


def test_large_body_crosses_through_shared_memory() -> None:
    """A Body of many chunks is written into shared memory chunk by chunk (never joined),
    read in place by the pool process, and a large result comes back the same way."""
    buffer = BodyBuffer()
    for i in range(64):
        buffer.add(bytes([97 + i % 26]) * 4096)
    body = Body(buffer)
    expected = b"".join(body.chunks)
    joined = counters.body_bytes_joined
    before = (counters.offloaded_calls, counters.offload_bytes_in, counters.offload_bytes_out)
    used: set[str] = set()

    async def main() -> tuple[tuple[int, int, int], bytes]:
        pool = OffloadPool(1)
        try:
            summary = await pool.run(checksum, body)
            result = await pool.run(upper, body, b"!")
            used.update(pool.segments())
            return summary, result
        finally:
            await pool.close()

    (size, crc, pid), result = asyncio.run(main())
    assert (size, crc) == (len(expected), zlib.crc32(expected))
    assert pid != os.getpid()
    assert result == expected.upper() + b"!"
    assert counters.body_bytes_joined == joined  # no join: chunks went straight in
    assert counters.offloaded_calls == before[0] + 2
    assert counters.offload_bytes_in == before[1] + 2 * len(expected)
    assert counters.offload_bytes_out == before[2] + len(result)
    assert used  # the data did cross through shared memory
    assert not used & segments()  # and nothing of it is left behind in /dev/shm


def test_errors_and_deaths_are_contained() -> None:
    """The function's exception is raised to the caller; a pool process that dies fails
    only its call and is replaced; an unpicklable function is a clear TypeError."""

    async def main() -> None:
        pool = OffloadPool(1)
        try:
            with pytest.raises(ValueError, match=r"no thanks \(5 bytes\)"):
                await pool.run(fail, b"hello")
            with pytest.raises(OffloadError, match="died"):
                await pool.run(hang_then_die, b"x")
            assert (await pool.run(checksum, b"again"))[0] == 5
            with pytest.raises(TypeError, match="picklable"):
                await pool.run(lambda data: 1, b"x")
            assert (await pool.run(checksum, b"still"))[0] == 5
        finally:
            await pool.close()

    asyncio.run(main())


def test_a_cancelled_call_frees_its_process_when_done() -> None:
    """A hook that times out while waiting does not lose the pool process: it serves the
    next call once the abandoned one finishes."""

    async def main() -> int:
        pool = OffloadPool(1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await pool.run(slow, b"abc", 0.3)
            return await pool.run(slow, b"abcd", 0.0)
        finally:
            await pool.close()

    assert asyncio.run(main()) == 4


def test_pool_off_runs_everything_inline() -> None:
    """offloadProcesses: 0 turns the pool off: any size runs inline."""
    offload_module.configure(0, 16)
    try:
        calls = counters.offloaded_calls
        assert asyncio.run(offload(checksum, b"x" * 100))[2] == os.getpid()
        assert counters.offloaded_calls == calls
    finally:
        offload_module.configure(1, offload_module.DEFAULT_THRESHOLD)
