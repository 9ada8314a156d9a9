"""How long a fresh worker takes to serve: `python -m perf.startup [--runs N]`.

A restarted worker is a fresh interpreter (supervisor.py), so this is what a crash costs in
time before the worker serves again: the imports, the config load (plugins constructed),
the gRPC server started. Measured in fresh interpreters, interpreter start included; the
median of N runs is printed (and the time to import the worker module alone).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CONFIG = "plugins:\n  - {name: tag, type: headers, config: {request: {set: {x-asm: '1'}}}}\n"

_CHILD = f"""
import time
t0 = time.perf_counter()
import asyncio
from asm_proxy.worker import run_loop
from asm_proxy.loader import load_text
from asm_proxy.server import Server
t1 = time.perf_counter()

async def main() -> int:
    server = Server(load_text("bench.yaml", {CONFIG!r}), watch=False, quiet=True)
    await server.start("127.0.0.1:0")
    t2 = time.perf_counter()
    await server.stop(0)
    print(t1 - t0, t2 - t0)
    return 0

raise SystemExit(run_loop(main()))
"""


def measure(runs: int) -> tuple[float, float, float]:
    """(median import s, median serving s, median wall s including interpreter start)."""
    imports, serving, walls = [], [], []
    for _ in range(runs):
        begin = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True
        )
        walls.append(time.perf_counter() - begin)
        first, second = (float(v) for v in done.stdout.split())
        imports.append(first)
        serving.append(second)
    return statistics.median(imports), statistics.median(serving), statistics.median(walls)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.startup")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    imports, serving, wall = measure(args.runs)
    print(
        f"worker imports {imports * 1000:.0f} ms, serving after {serving * 1000:.0f} ms "
        f"(process start to serving: {wall * 1000:.0f} ms), median of {args.runs}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
