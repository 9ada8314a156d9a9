"""`python -m perf`: asm-proxy's benchmarks through a real Envoy (see docs/PERFORMANCE.md).

    scripts/perf                 # the full run; results in perf/results/
    scripts/perf --quick         # a smoke run of every scenario (CI runs it; no timing claims)
    scripts/perf --only headers-on-demand --seconds 20

Everything listens on 127.0.0.1 (or Unix sockets in a scratch directory); every load run is
bounded in time; every process started is stopped.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from perf import report
from perf.envoys import start_upstream
from perf.load import wrk_path
from perf.run import Options, machine, measure, plugin_missing
from perf.scenarios import (
    POST_1K,
    KiB,
    MiB,
    Scenario,
    body_sweep,
    chain_sweep,
    envoy_alone,
    main_scenarios,
    on_transport,
    worker_sweep,
)

RESULTS = Path(__file__).resolve().parent / "results"


def plan(quick: bool, cores: int, transports: list[str]) -> list[Scenario]:
    """Envoy alone, the floor and every main scenario on each transport (side by side in
    one run); the sweeps on the first transport only (they measure asm-proxy's framework)."""
    main = [on_transport(s, t) for s in main_scenarios() for t in transports]
    main = list({s.name: s for s in main}.values())
    if quick:
        sweeps = body_sweep([64 * KiB]) + chain_sweep([20]) + worker_sweep([1])
    else:
        sweeps = (
            body_sweep([1 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB])
            + chain_sweep([1, 2, 5, 10, 20])
            + worker_sweep(list(range(1, cores + 1)))
        )
    sweeps = [on_transport(s, transports[0]) for s in sweeps]
    # Envoy alone for every request shape a runnable scenario uses (the ratio's divisor).
    shapes = {POST_1K.name: POST_1K}
    for s in main + sweeps:
        if s.group in ("main", "workers") and not plugin_missing(s):
            shapes.setdefault(s.shape.name, s.shape)
    return [envoy_alone(shape) for shape in shapes.values()] + main + sweeps


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r["rps"])
    row = dict(ok[len(ok) // 2])
    if len(ok) > 1:
        row["rps_runs"] = [r["rps"] for r in ok]
        for key in ("server_cpu_us", "envoy_cpu_us", "p50_ms", "p99_ms", "rss_per_stream_bytes"):
            values = [r[key] for r in ok if key in r]
            if values:
                row[key] = round(statistics.median(values), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: every scenario, briefly")
    parser.add_argument("--out", type=Path, help=f"results directory (default {RESULTS})")
    parser.add_argument("--only", nargs="+", help="run only these scenarios (and Envoy alone)")
    parser.add_argument("--seconds", type=float, help="measured seconds per scenario (10)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per scenario (2)")
    parser.add_argument(
        "--repeat", type=int, help="rounds, interleaved; medians kept (3; --quick: 1)"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--socket", choices=["unix", "tcp"], default="unix", help="how Envoy reaches the server"
    )
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=["grpcio", "nghttp2"],
        default=["nghttp2", "grpcio"],
        help="asm-proxy's transports, side by side (the sweeps use the first)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="asm-proxy workers outside the workers sweep (1, like the floor; 0: one per core)",
    )
    parser.add_argument("--envoy-concurrency", type=int, default=2)
    parser.add_argument("--streams", type=int, help="open streams for RSS per stream (1000)")
    parser.add_argument(
        "--load", choices=["wrk", "python"], help="load generator (default wrk; python if absent)"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every Envoy, server and wrk started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load = args.load or ("wrk" if wrk_path() else "python")
    if load == "wrk" and not wrk_path():
        print("wrk is not installed: apt-get install wrk (scripts/perf does it)", file=sys.stderr)
        return 2
    if load == "python" and not args.quick:
        print("note: the Python load generator is for --quick; its numbers are not wrk's")
    options = Options(
        seconds=args.seconds or (1.0 if args.quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (0.0 if args.quick else 2.0),
        connections=args.connections,
        envoy_concurrency=args.envoy_concurrency,
        socket=args.socket,
        streams=args.streams or (50 if args.quick else 1000),
        load=load,
        workers=args.workers or None,
    )
    repeat = args.repeat or (1 if args.quick else 3)
    out = args.out or (Path(tempfile.mkdtemp(prefix="asm-proxy-perf-")) if args.quick else RESULTS)
    info = machine()
    scenarios = plan(args.quick, info["cores"], args.transports)
    if args.only:
        wanted = set(args.only)
        kept = [s for s in scenarios if s.name in wanted or s.name.split("@")[0] in wanted]
        shapes = {s.shape.name for s in kept}
        scenarios = [
            s for s in scenarios if s in kept or (s.server == "envoy" and s.shape.name in shapes)
        ]
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}
    with tempfile.TemporaryDirectory(prefix="asm-proxy-perf-work-") as tmp:
        workdir = Path(tmp)
        upstream = start_upstream(workdir)
        try:
            for round_ in range(repeat):
                for scenario in scenarios:
                    row = measure(scenario, options, upstream.port, workdir / f"r{round_}")
                    runs[scenario.name].append(row)
                    _progress(row)
        finally:
            upstream.stop()
    rows = [_median_row(runs[s.name]) for s in scenarios]
    report.add_ratios(rows)
    result = {
        "machine": info,
        "options": {**options.__dict__, "repeat": repeat, "quick": args.quick},
        "seconds_taken": round(time.monotonic() - started, 1),
        "rows": rows,
        "targets": report.targets(rows),
    }
    report.write(result, out)
    print(report.markdown(result))
    print(f"results in {out}/ (results.json, results.md, results.png)")
    errors = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return 1 if errors else 0


def _progress(row: dict[str, Any]) -> None:
    if row.get("status") == "ok":
        cpu = f", server {row['server_cpu_us']} us/req" if "server_cpu_us" in row else ""
        print(
            f"  {row['scenario']:<28} {row['rps']:>9.0f} req/s  p99 {row['p99_ms']:.2f} ms"
            f"{cpu}, Envoy {row['envoy_cpu_us']} us/req",
            flush=True,
        )
    else:
        print(f"  {row['scenario']:<28} {row.get('status')}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
