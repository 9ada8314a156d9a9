"""The benchmark suite runs: `python -m perf --quick`, as CI's smoke test.

No timing is asserted: the numbers of a quick run on a shared machine mean nothing. What is
checked is that every scenario ran (or was skipped for a missing plugin type), through a
real Envoy, and that the JSON, the markdown table and the plot were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perf.load import parse_wrk
from perf.report import add_ratios, targets

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.envoy


def test_quick_run(tmp_path: Path) -> None:
    """Every scenario is measured or skipped with a reason; results are written."""
    done = subprocess.run(
        # The Python load generator: what CI has (wrk's output parsing is tested below).
        [sys.executable, "-m", "perf", "--quick", "--load", "python", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {row["scenario"]: row for row in result["rows"]}
    for name in ("envoy-alone:post-1k", "floor", "headers-every-phase", "headers-on-demand"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["requests"] > 0
        assert rows[name]["errors"] == 0
    for name in ("floor", "headers-every-phase", "headers-on-demand", "chain-10-1-match"):
        assert rows[name]["server_cpu_us"] > 0
        assert rows[name]["ratio"] > 0
    # These streams stay open past the headers, so the probe weighed them: a figure, not
    # "streams end after the headers". Its value is not judged (a slope clamped at 0, over
    # the 50 streams of a quick run, moves with where the allocator's steps fall).
    for name in ("floor", "headers-every-phase", "body-65536@nghttp2"):
        assert_weighed(rows[name])
    # Every main scenario runs on each transport, side by side.
    for name in ("headers-every-phase", "headers-on-demand", "chain-10-1-match"):
        row = rows[f"{name}@nghttp2"]
        assert row["status"] == "ok" and row["errors"] == 0, row
        assert row["transport"] == "nghttp2" and row["server_cpu_us"] > 0
    assert rows["headers-on-demand"]["rss_per_stream"] == "streams end after the headers"
    if rows["nacos-buffered-1k"]["status"] == "ok":  # its stream waits for the answer
        assert_weighed(rows["nacos-buffered-1k"])
    if rows["jwt-authz"]["status"] == "ok":
        assert rows["jwt-authz"]["rss_per_stream"] == "no stream: one unary Check per request"
    # Streams cut by the window's edges make these averages, not exact counts.
    assert round(rows["headers-on-demand"]["messages_per_stream"]) == 1  # response skipped
    assert round(rows["headers-every-phase"]["messages_per_stream"]) == 2
    for name, type_name in (
        ("nacos-buffered-1k", "nacos"),
        ("body-log-streamed-1m", "body_log"),
        ("jwt-authz", "auth"),
        ("jwt-authz-uncached", "auth"),
        ("jwt-authz-http", "auth"),
    ):
        status = rows[name]["status"]
        assert status in ("ok", f"skipped: plugin type {type_name} not installed") or (
            status.startswith("skipped: config refused")
        ), status
    assert {row["group"] for row in result["rows"]} == {
        "main",
        "floors",
        "body",
        "chain",
        "workers",
    }
    for name in ("floor-h2", "floor-nghttp2"):
        assert rows[name]["status"] == "ok" and rows[name]["errors"] == 0, rows[name]
    assert (tmp_path / "results.md").read_text().startswith("# asm-proxy benchmark")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t["target"][:2] for t in result["targets"]][:2] == ["1.", "2."]
    assert any(t["target"].startswith("T1 [nghttp2]") for t in result["targets"])


def assert_weighed(row: dict[str, Any]) -> None:
    """The row has an RSS-per-stream figure: its streams were still open when weighed."""
    assert "rss_per_stream" not in row, row  # the reason there is no figure
    assert isinstance(row.get("rss_per_stream_bytes"), int), row


WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:10000/api/items
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.31ms    4.20ms  61.73ms   80.12%
    Req/Sec   650.12     80.33     0.88k    70.00%
  Latency Distribution
     50%   11.90ms
     75%   14.01ms
     90%   17.20ms
     99%    1.05s
  6502 requests in 5.01s, 1.23MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1297.80
Transfer/sec:    251.18KB
"""


def test_wrk_output_is_read() -> None:
    """Requests, duration, percentiles (any unit) and every kind of error."""
    result = parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.errors) == (6502, 5.01, 7)
    assert (result.p50_ms, result.p99_ms) == (11.9, 1050.0)


def test_targets_are_judged_from_the_figures() -> None:
    """A target is met or not by the numbers in the rows, and says which numbers."""
    rows = [
        {
            "scenario": "envoy-alone:a",
            "server": "envoy",
            "shape": "a",
            "group": "main",
            "status": "ok",
            "rps": 1000.0,
        },
        {
            "scenario": "floor",
            "server": "floor",
            "shape": "a",
            "group": "main",
            "status": "ok",
            "rps": 240.0,
            "server_cpu_us": 650.0,
        },
        {
            "scenario": "headers-every-phase",
            "server": "asm-proxy",
            "shape": "a",
            "group": "main",
            "status": "ok",
            "rps": 250.0,
            "server_cpu_us": 700.0,
        },
        {
            "scenario": "headers-on-demand",
            "server": "asm-proxy",
            "shape": "a",
            "group": "main",
            "status": "ok",
            "rps": 430.0,
            "server_cpu_us": 300.0,
        },
    ]
    add_ratios(rows)
    assert rows[3]["ratio"] == 0.43
    judged = {t["target"][:2]: t for t in targets(rows)}
    assert judged["1."]["met"] is False and "700.0 us vs floor 650.0 us" in judged["1."]["figure"]
    assert judged["2."]["met"] is True
