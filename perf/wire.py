"""What the protobuf layer costs: asm-proxy's own messages against xds-protos' generated ones.

    python -m perf.wire        # needs xds-protos installed to compare (pip install xds-protos)

Both are protobuf's upb C implementation, so parsing should cost the same; what differs is
what importing them drags in (xds-protos' modules import Envoy's whole annotation and
validation tree) and therefore how long a fresh worker takes to start. Each figure is the
median of several fresh interpreters (imports) or of timeit repeats (parse / serialize).
Results in perf/results/wire.json (docs/PERFORMANCE.md, "The wire messages").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

IMPORTS = {
    "asm_proxy.wire": "import asm_proxy.wire",
    "xds-protos": (
        "from envoy.service.ext_proc.v3 import external_processor_pb2\n"
        "from envoy.service.ext_proc.v3 import external_processor_pb2_grpc\n"
        "from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc\n"
        "from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2"
    ),
}
MODULES = {
    "asm_proxy.wire": "asm_proxy.wire.ext_proc_pb2",
    "xds-protos": "envoy.service.ext_proc.v3.external_processor_pb2",
}
#: Request headers as Envoy sends them for a small API call (16 headers, raw_value).
HEADERS = [
    (":method", "POST"),
    (":path", "/api/items?page=2"),
    (":authority", "shop.example.com"),
    (":scheme", "https"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate, br"),
    ("content-type", "application/json"),
    ("content-length", "1024"),
    ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
    ("cookie", "session=0123456789abcdef; theme=dark"),
    ("x-forwarded-for", "10.0.0.7"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "5f0c6b1e-9a1d-4f43-8d0e-000000000001"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-envoy-expected-rq-timeout-ms", "15000"),
]


#: Imported before the clock starts, for both: the asm_proxy package (whose __init__ a
#: worker imports anyway) and protobuf's runtime.
SETUP = "import asm_proxy, google.protobuf.message, google.protobuf.struct_pb2"


def import_ms(statement: str, runs: int) -> float | None:
    """Median wall time of `statement` in a fresh interpreter, after SETUP."""
    code = (
        f"{SETUP}\nimport time; t = time.perf_counter()\n{statement}\n"
        "print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return None
        times.append(float(done.stdout.strip()) * 1000)
    return statistics.median(times)


def codec_us(module_name: str) -> dict[str, float] | None:
    """Median µs to parse and to serialize a 16-header ProcessingRequest."""
    try:
        module: Any = __import__(module_name, fromlist=["ProcessingRequest"])
    except ImportError:
        return None
    request = module.ProcessingRequest()
    for key, value in HEADERS:
        header = request.request_headers.headers.headers.add()
        header.key, header.raw_value = key, value.encode()
    data = request.SerializeToString()
    parse = min(
        timeit.repeat(lambda: module.ProcessingRequest.FromString(data), number=20000, repeat=5)
    )
    write = min(timeit.repeat(request.SerializeToString, number=20000, repeat=5))
    return {
        "parse_us": parse / 20000 * 1e6,
        "serialize_us": write / 20000 * 1e6,
        "bytes": len(data),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.wire")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    for name, statement in IMPORTS.items():
        row: dict[str, Any] = {"messages": name, "import_ms": import_ms(statement, args.runs)}
        row.update(codec_us(MODULES[name]) or {})
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
