"""asm-proxy's own cost per exchange in instructions, noise-free: `python -m perf.instructions`.

CPU time on a shared machine moves by ±15 % from run to run; instruction counts under
valgrind's callgrind do not (with PYTHONHASHSEED fixed, they repeat exactly). This drives
the server's per-exchange code (`Stream.handle`: decoding, chain selection, hooks, building
the answer, protobuf serialization; not gRPC) for the chain-length and body-size sweeps of
the benchmark and counts the instructions per exchange: (instructions with N exchanges -
instructions with none) / N. Needs valgrind (Debian's package). Results in
perf/results/instructions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCHANGES = 400

HEADERS = [
    (":method", "POST"),
    (":path", "/api/items"),
    (":authority", "127.0.0.1:10000"),
    (":scheme", "http"),
    ("user-agent", "wrk"),
    ("content-type", "application/json"),
    ("content-length", "1024"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "5f0c6b1e-9a1d-4f43-8d0e-000000000001"),
    ("x-envoy-expected-rq-timeout-ms", "15000"),
]


def drive(config: str, body_bytes: int, count: int) -> None:
    """Run `count` exchanges through Stream.handle: request headers, and the body if any."""
    from asm_proxy.loader import load_text
    from asm_proxy.stream import Stream
    from asm_proxy.testing import messages

    loaded = load_text("bench.yaml", config)
    headers = messages.request_headers(HEADERS, end_of_stream=not body_bytes)
    body = messages.request_body(b"x" * body_bytes, True) if body_bytes else None

    async def main() -> None:
        await loaded.chain.start()
        for _ in range(count):
            stream = Stream(loaded.chain, loaded.settings)
            reply = await stream.handle(headers)
            reply.SerializeToString()
            if body is not None:
                reply = await stream.handle(body)
                reply.SerializeToString()

    asyncio.run(main())


def _count(config: str, body_bytes: int, count: int, workdir: Path) -> int:
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"config": config, "body": body_bytes, "count": count}))
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "perf.instructions",
            "--child",
            str(spec),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        # String hashes (dict and set layouts) vary per process otherwise: +-1-2 %.
        env={**os.environ, "PYTHONHASHSEED": "0"},
        timeout=900,
        check=False,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"callgrind failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def measure(points: list[tuple[str, str, float, str, int]]) -> list[dict[str, Any]]:
    """points: (group, name, x, config, body bytes)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for group, name, x, config, body_bytes in points:
            base = _count(config, body_bytes, 0, work)
            full = _count(config, body_bytes, EXCHANGES, work)
            per = (full - base) / EXCHANGES
            rows.append({"group": group, "scenario": name, "x": x, "instructions": round(per)})
            print(f"  {name:<12} {per:>12,.0f} instructions per exchange", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.instructions")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child.read_text())
        drive(spec["config"], spec["body"], spec["count"])
        return 0
    if not shutil.which("valgrind"):
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    from perf.scenarios import HEADERS_ONE, WHOLE_BODY, chain

    points: list[tuple[str, str, float, str, int]] = [("main", "headers-1", 1, HEADERS_ONE, 0)]
    points += [("chain", f"chain-{n}", n, chain(n), 0) for n in (1, 2, 5, 10, 20)]
    points += [
        ("body", f"body-{size}", size, WHOLE_BODY, size)
        for size in (1024, 16 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
    ]
    rows = measure(points)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "exchanges": EXCHANGES,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
