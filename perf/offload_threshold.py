"""Where offloading starts to pay: `python -m perf.offload_threshold`.

The work is the kind the pool is for: a JSON rewrite (parse with orjson, change every
instance's address, serialize), on Nacos-like documents from 1 KiB to 4 MiB. For each size:

- inline: how long the work holds the event loop when done in the hook itself;
- offloaded: how long the event loop is busy for the same work sent to the pool (copying
  the body into shared memory, the pipe round trip, copying the result out; measured as
  the loop thread's own CPU time), and the wall time the hook waits.

Offloading wins where the loop is busy for less time than the inline work would hold it:
every other stream of the worker waits that much less. The threshold is the smallest size
from which it wins at every larger size. Results in perf/results/offload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from asm_proxy.offload import OffloadPool

SIZES = [1024 * 4**i for i in range(7)]  # 1 KiB ... 4 MiB


def document(size: int) -> bytes:
    instance = {
        "instanceId": "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@provider",
        "ip": "10.0.0.1",
        "port": 8080,
        "weight": 1.0,
        "healthy": True,
        "metadata": {"preserved.register.source": "SPRING_CLOUD"},
    }
    one = len(orjson.dumps(instance)) + 1
    hosts = [dict(instance, ip=f"10.0.{i // 250}.{i % 250}") for i in range(max(1, size // one))]
    return orjson.dumps({"name": "DEFAULT_GROUP@@provider", "hosts": hosts})


def rewrite(data: memoryview, host: str) -> bytes:
    """The offloaded work: every instance's ip becomes the service's host name."""
    doc = orjson.loads(data)
    for instance in doc["hosts"]:
        instance["ip"] = host
    return orjson.dumps(doc)


async def measure(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    pool = OffloadPool(1)
    rows = []
    try:
        await pool.run(rewrite, document(1024), "warm.up")  # the process has started
        for size in sizes:
            data = document(size)
            inline, loop_busy, waited = [], [], []
            for _ in range(rounds):
                start = time.perf_counter()
                rewrite(memoryview(data), "provider.default.svc.cluster.local")
                inline.append(time.perf_counter() - start)
                cpu, wall = time.thread_time(), time.perf_counter()
                await pool.run(rewrite, data, "provider.default.svc.cluster.local")
                loop_busy.append(time.thread_time() - cpu)
                waited.append(time.perf_counter() - wall)
            rows.append(
                {
                    "bytes": len(data),
                    "inline_us": round(statistics.median(inline) * 1e6, 1),
                    "offload_loop_busy_us": round(statistics.median(loop_busy) * 1e6, 1),
                    "offload_wait_us": round(statistics.median(waited) * 1e6, 1),
                }
            )
    finally:
        await pool.close()
    return rows


def threshold(rows: list[dict[str, Any]]) -> int | None:
    """The smallest size from which offloading keeps the loop busy for less, at every
    larger size too."""
    found = None
    for row in reversed(rows):
        if row["offload_loop_busy_us"] < row["inline_us"]:
            found = row["bytes"]
        else:
            break
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.offload_threshold")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = asyncio.run(measure(SIZES, args.rounds))
    found = threshold(rows)
    print(f"{'bytes':>9} {'inline µs':>10} {'offload: loop busy µs':>22} {'hook waits µs':>14}")
    for row in rows:
        print(
            f"{row['bytes']:>9} {row['inline_us']:>10} {row['offload_loop_busy_us']:>22} "
            f"{row['offload_wait_us']:>14}"
        )
    print(f"offloading wins from {found} bytes" if found else "offloading never wins here")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "offload.json").write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rows": rows, "threshold": found},
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
