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


#: What is recorded besides the work (the observability benchmark's variants): nothing;
#: metrics (the default of a server); metrics and traces, none sampled; every one sampled.
#: `-parent`: the request carries an unsampled traceparent (`metrics-parent` is the
#: baseline of `unsampled-parent`: the same message, tracing off).
OBSERVE = ("off", "metrics", "unsampled", "metrics-parent", "unsampled-parent", "sampled")
#: What Envoy or Istio forward when their caller's trace was not sampled.
UNSAMPLED_PARENT = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")


def _observe(chain: Any, observe: str) -> None:
    """Set up what `observe` names, as a worker does at start."""
    if observe == "off":
        return
    from asm_proxy.metrics.serving import bind_chain, record

    bind_chain(chain)
    record(True)
    if observe.startswith("metrics"):
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from asm_proxy import tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> Any:
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

    sampler = ALWAYS_ON if observe == "sampled" else ParentBased(TraceIdRatioBased(0.0))
    provider = TracerProvider(sampler=sampler, resource=tracing.resource())
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracing.install(tracing.Tracing(provider))


def drive(config: str, body_bytes: int, count: int, observe: str = "off") -> None:
    """Run `count` exchanges through Stream.handle: request headers, and the body if any;
    with the stream metrics and the tracer called around each, as services.py calls them."""
    from asm_proxy import observe as seam
    from asm_proxy.loader import load_text
    from asm_proxy.observe import EXT_PROC, StreamEnd
    from asm_proxy.stream import Stream
    from asm_proxy.testing import messages

    loaded = load_text("bench.yaml", config)
    _observe(loaded.chain, observe)
    sent = [*HEADERS, UNSAMPLED_PARENT] if observe.endswith("-parent") else HEADERS
    headers = messages.request_headers(sent, end_of_stream=not body_bytes)
    wire = headers.SerializeToString()  # as it came off the wire (the tracer reads it)
    body = messages.request_body(b"x" * body_bytes, True) if body_bytes else None

    async def main() -> None:
        await loaded.chain.start()
        for _ in range(count):
            meter = seam.stream_meter
            started = meter.started(EXT_PROC) if meter is not None else 0.0
            stream = Stream(loaded.chain, loaded.settings)
            reply = await stream.handle(headers, wire)
            reply.SerializeToString()
            if body is not None:
                reply = await stream.handle(body)
                reply.SerializeToString()
            x = stream.exchange
            if meter is not None:
                meter.ended(EXT_PROC, x, StreamEnd.COMPLETE, started)
            if x is not None and x.trace is not None:
                seam.trace_ended(x, StreamEnd.COMPLETE)

    asyncio.run(main())
    if observe not in ("off", "metrics", "metrics-parent"):
        from asm_proxy import tracing

        tracing.shutdown()  # exported spans are part of the cost


def _count(config: str, body_bytes: int, count: int, workdir: Path, observe: str = "off") -> int:
    spec = workdir / "spec.json"
    spec.write_text(
        json.dumps({"config": config, "body": body_bytes, "count": count, "observe": observe})
    )
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


Point = tuple[str, str, float, str, int, str]


def measure(points: list[Point]) -> list[dict[str, Any]]:
    """points: (group, name, x, config, body bytes, what is observed)."""
    # Byte-compile first: a source file changed since its .pyc would be compiled by the
    # first (no-exchange) run only, and its compilation would count against the exchanges.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "asm_proxy", "handlers", "perf"],
        cwd=ROOT,
        check=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for group, name, x, config, body_bytes, observe in points:
            base = _count(config, body_bytes, 0, work, observe)
            full = _count(config, body_bytes, EXCHANGES, work, observe)
            per = (full - base) / EXCHANGES
            rows.append({"group": group, "scenario": name, "x": x, "instructions": round(per)})
            print(f"  {name:<12} {per:>12,.0f} instructions per exchange", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.instructions")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--observability",
        action="store_true",
        help="only headers-1 with metrics and traces off, on, unsampled and sampled",
    )
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child.read_text())
        drive(spec["config"], spec["body"], spec["count"], spec.get("observe", "off"))
        return 0
    if not shutil.which("valgrind"):
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    from perf.scenarios import HEADERS_ONE, WHOLE_BODY, chain

    # The framework's own sweeps, without metrics or traces (as before they existed).
    points: list[Point] = [("main", "headers-1", 1, HEADERS_ONE, 0, "off")]
    points += [("chain", f"chain-{n}", n, chain(n), 0, "off") for n in (1, 2, 5, 10, 20)]
    points += [
        ("body", f"body-{size}", size, WHOLE_BODY, size, "off")
        for size in (1024, 16 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
    ]
    # What recording costs: headers-1 with each level of observability.
    observed = [
        ("observability", f"headers-1-{o}", i, HEADERS_ONE, 0, o) for i, o in enumerate(OBSERVE)
    ]
    if args.observability:
        points = observed
    else:
        points += observed
    rows = measure(points)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "instructions-observability.json" if args.observability else "instructions.json"
    (args.out / name).write_text(
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
