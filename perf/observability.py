"""What metrics and traces cost per request: `python -m perf.observability`.

The headers-on-demand scenario (one `headers` plugin, Envoy sends what it needs) through a
real Envoy, with asm-proxy's server CPU per request measured in each variant. Every
request carries an unsampled `traceparent` (as behind an Envoy or Istio sampling at 1 %),
in every variant, so the variants differ only in what asm-proxy records:

    metrics-off          `metrics: false`, no tracing: the baseline of metrics' cost
    metrics              the default: metrics recorded, no tracing (the baseline of traces')
    traced-unsampled     + OTEL_TRACES_EXPORTER=otlp, parentbased_traceidratio 0: none is
                         sampled
    traced-sampled       + the same with always_on: every exchange and hook exported

on one transport (`--transport`: nghttp2, the server's default, or grpcio).

The variants run interleaved, round after round, each round starting with the next one
(the machine is shared: one round's noise hits every variant alike), and the median of
the rounds is kept, with the median of each round's own differences. Spans go to an OTLP sink
in this process (perf/otlp_sink.py). Results in perf/results/observability-TRANSPORT.json; the
instruction counts of the same variants, noise-free, come from
`python -m perf.instructions --observability`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from perf.envoys import start_upstream
from perf.load import Shape, wrk_path
from perf.otlp_sink import OtlpSink
from perf.run import Options, machine, measure
from perf.scenarios import COMMON, HEADERS_ONE, POST_1K, Scenario, on_demand

RESULTS = Path(__file__).resolve().parent / "results"
UNSAMPLED_PARENT = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")


def variants(sink: OtlpSink, transport: str = "nghttp2") -> list[Scenario]:
    traced_shape = Shape(
        "post-1k-traced",
        POST_1K.method,
        POST_1K.path,
        POST_1K.body_bytes,
        POST_1K.content_type,
        headers=(UNSAMPLED_PARENT,),
    )
    base = Scenario(
        "metrics",
        "1 plugin, headers, phases on demand; metrics on",
        traced_shape,
        "asm-proxy",
        config=HEADERS_ONE,
        ext_proc=on_demand(),
        group="observability",
        transport=transport,
    )
    otlp = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    return [
        replace(
            base,
            name="metrics-off",
            title="metrics off",
            config=HEADERS_ONE.replace(COMMON, COMMON + "metrics: false\n"),
        ),
        base,
        replace(
            base,
            name="traced-unsampled",
            title="metrics, traces on, none sampled",
            env=otlp,
        ),
        replace(
            base,
            name="traced-sampled",
            title="metrics, every exchange traced",
            env={**otlp, "OTEL_TRACES_SAMPLER": "always_on"},
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.observability")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--transport", choices=["nghttp2", "grpcio"], default="nghttp2")
    args = parser.parse_args(argv)
    options = Options(
        seconds=args.seconds,
        warmup=2.0,
        streams=0,
        load="wrk" if wrk_path() else "python",
    )
    sink = OtlpSink()
    runs: dict[str, list[dict[str, Any]]] = {}
    started = time.monotonic()
    try:
        scenarios = variants(sink, args.transport)
        with tempfile.TemporaryDirectory(prefix="asm-proxy-perf-obs-") as tmp:
            upstream = start_upstream(Path(tmp))
            try:
                for round_ in range(args.rounds):
                    # Each round starts with another variant, so none always follows the
                    # heaviest (the sampled one's exports) or goes first.
                    shift = round_ % len(scenarios)
                    for scenario in scenarios[shift:] + scenarios[:shift]:
                        row = measure(scenario, options, upstream.port, Path(tmp) / f"r{round_}")
                        runs.setdefault(scenario.name, []).append(row)
                        print(
                            f"  round {round_ + 1} {scenario.name:<18} "
                            f"{row.get('server_cpu_us', row.get('status'))} us/req",
                            flush=True,
                        )
            finally:
                upstream.stop()
    finally:
        sink.stop()
    rows = []
    for name, scenario_runs in runs.items():
        ok = [r for r in scenario_runs if r.get("status") == "ok"]
        cpu = [r["server_cpu_us"] for r in ok]
        rows.append(
            {
                "variant": name,
                "server_cpu_us": round(statistics.median(cpu), 1) if cpu else None,
                "server_cpu_us_runs": cpu,
                "rps": round(statistics.median(r["rps"] for r in ok), 1) if ok else None,
                "errors": sum(r.get("errors", 0) for r in ok),
            }
        )
    by = {r["variant"]: r["server_cpu_us"] for r in rows}

    def delta(variant: str, base: str) -> float | None:
        if by.get(variant) is None or not by.get(base):
            return None
        return round((by[variant] - by[base]) / by[base] * 100, 1)

    def per_round(variant: str, base: str) -> float | None:
        """The median of each round's own difference (the rounds interleave the variants,
        so a round's noise hits both alike)."""
        pairs = [
            (v.get("server_cpu_us"), b.get("server_cpu_us"))
            for v, b in zip(runs.get(variant, []), runs.get(base, []), strict=False)
        ]
        diffs = [(v - b) / b * 100 for v, b in pairs if v is not None and b]
        return round(statistics.median(diffs), 1) if diffs else None

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "transport": args.transport,
        "rows": rows,
        "percent": {
            "metrics vs metrics-off": delta("metrics", "metrics-off"),
            "traced-unsampled vs metrics": delta("traced-unsampled", "metrics"),
            "traced-sampled vs metrics": delta("traced-sampled", "metrics"),
        },
        "percent_median_of_rounds": {
            "metrics vs metrics-off": per_round("metrics", "metrics-off"),
            "traced-unsampled vs metrics": per_round("traced-unsampled", "metrics"),
            "traced-sampled vs metrics": per_round("traced-sampled", "metrics"),
        },
        "spans_exported": sink.spans,
        "seconds_taken": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"observability-{args.transport}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['variant']:<18} {row['server_cpu_us']} us/req (runs {row['server_cpu_us_runs']})"
        )
    print(json.dumps(result["percent"]), json.dumps(result["percent_median_of_rounds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
