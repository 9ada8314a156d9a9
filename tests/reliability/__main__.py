"""`python -m tests.reliability` (or `scripts/reliability`): the full drills and the soak.

    scripts/reliability                  every drill, full length, then a 30-minute soak
    scripts/reliability --soak 5m        a shorter soak
    scripts/reliability --soak 0         drills only
    scripts/reliability --only kills,drain,soak
    scripts/reliability --transport grpcio   asm-proxy on grpc.aio (default: the config's, auto)

Results go to tests/reliability/results/last-run.json (docs/RELIABILITY.md quotes them).
Everything runs on 127.0.0.1 and Unix sockets in a scratch directory; every load is bounded
in rate and time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asm_proxy.durations import parse_duration
from tests.reliability import drills, stack
from tests.reliability.record import RESULTS, plain
from tests.reliability.reload_drill import reload_faults
from tests.reliability.soak import SoakResult, soak

BEFORE = drills.ENVOY_BEFORE


def _kills(work: Path) -> dict[str, Any]:
    out = {}
    for transport in ("unix", "tcp"):
        for name, setup in (("before", BEFORE), ("after", None)):
            out[f"{transport}, Envoy config {name}"] = drills.worker_kills(
                work / f"kills-{transport}-{name}", transport=transport, kills=10, envoy=setup
            )
    return out


def _drain(work: Path) -> dict[str, Any]:
    out = {}
    for transport in ("unix", "tcp"):
        for name, setup in (("before", BEFORE), ("after", None)):
            out[f"{transport}, Envoy config {name}"] = drills.drain_one_of_two(
                work / f"drain-{transport}-{name}", transport=transport, after=1000, envoy=setup
            )
    return out


def _orphans(work: Path) -> dict[str, Any]:
    delays = [round(0.025 * i, 3) for i in range(40)]  # 0 to 0.975 s after the worker's death
    serving = [round(0.05 * i, 2) for i in range(8)]  # 0 to 0.35 s after the new one serves
    return {
        "supervisor SIGKILL during a restart": drills.supervisor_killed_during_restart(
            work, delays, serving=serving
        )
    }


def _recycle(work: Path) -> dict[str, Any]:
    hoard = "  - name: hoard\n    type: 'tests.support.plugins:Hoard'\n"
    return {
        "unix, maxStreamsPerWorker 1000": drills.recycling_under_load(
            work / "unix", transport="unix", requests=18_000
        ),
        "tcp, maxStreamsPerWorker 1000": drills.recycling_under_load(
            work / "tcp", transport="tcp", requests=18_000
        ),
        "unix, maxWorkerRss 128Mi (a plugin keeping 256 KiB a request)": drills.recycling_under_load(
            work / "rss",
            transport="unix",
            requests=6_000,
            rate=200,
            trigger="maxWorkerRss: 128Mi",
            plugins=hoard,
        ),
    }


def _reload(work: Path) -> dict[str, Any]:
    return {"config file faults under auth": reload_faults(work, rounds=5)}


def _bad_clients(work: Path) -> dict[str, Any]:
    return {"bad clients": drills.bad_clients(work, count=2000)}


def _memory(work: Path) -> dict[str, Any]:
    runs = drills.memory_per_request(work)
    return {
        f"{r.server}, Envoy config {r.envoy}": {
            **plain(r),
            "bytes_per_request": round(r.bytes_per_request, 1),
        }
        for r in runs
    }


def _spread(work: Path) -> dict[str, Any]:
    old = {"asm_proxy_max_streams": 8, "asm_proxy_max_requests_per_connection": None}
    return {
        name: drills.tcp_spread(work / str(n), requests=12_000, envoy=envoy, name=name)
        for n, (name, envoy) in enumerate(
            (
                ("max_concurrent_streams 8 (the old advice)", old),
                ("max_requests_per_connection 100 (now)", None),
            )
        )
    }


DRILLS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "kills": _kills,
    "drain": _drain,
    "orphans": _orphans,
    "recycle": _recycle,
    "reload": _reload,
    "bad-clients": _bad_clients,
    "memory": _memory,
    "spread": _spread,
}


def _soak_line(result: SoakResult) -> str:
    last = result.samples[-1]
    rss = ", ".join(f"{pid}: {b / 2**20:.1f} MiB" for pid, b in sorted(last.rss.items()))
    return f"{last.at:7.0f}s {last.requests} requests; RSS {rss}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/reliability")
    parser.add_argument("--soak", default="30m", help="soak duration (0: none); default 30m")
    parser.add_argument("--warmup", default="5m", help="soak warm-up excluded from growth")
    parser.add_argument("--only", help=f"comma-separated: {', '.join(DRILLS)}, soak")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--transport", help="asm-proxy's transport (grpcio, nghttp2); default: the config's"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    chosen = args.only.split(",") if args.only else [*DRILLS, "soak"]
    unknown = set(chosen) - {*DRILLS, "soak"}
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    stack.TRANSPORT = args.transport
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "transport": args.transport or "auto",
    }
    with tempfile.TemporaryDirectory(prefix="asm-proxy-reliability-") as scratch:
        work = Path(scratch)
        for name in (n for n in chosen if n in DRILLS):
            print(f"drill {name} ...", flush=True)
            started = time.monotonic()
            results[name] = plain(DRILLS[name](work / name))
            print(json.dumps(results[name], indent=1), flush=True)
            print(f"drill {name}: {time.monotonic() - started:.0f}s", flush=True)
        seconds = parse_duration(args.soak) if "soak" in chosen else 0.0
        if seconds:
            print(f"soak {seconds:.0f}s ...", flush=True)
            result = soak(
                work / "soak",
                seconds=seconds,
                warmup=min(parse_duration(args.warmup), seconds / 2),
                report=lambda r: print(_soak_line(r), flush=True),
            )
            results["soak"] = {
                **plain(result),
                "growth_percent": result.growth(),
                "bytes_per_request": result.bytes_per_request(),
            }
            print(
                json.dumps({k: v for k, v in results["soak"].items() if k != "samples"}, indent=1)
            )
    (args.out / "last-run.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.out / 'last-run.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
