"""The soak: asm-proxy behind Envoy at half its measured capacity for a long time, every
request checked, every worker's RSS sampled. Passes with 0 failed requests and each
worker's RSS growing less than 5 % from the end of warm-up to the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability import procs
from tests.reliability.drills import PASS_THROUGH
from tests.reliability.load import Load
from tests.reliability.stack import Front
from tests.support.workers import SupervisorThread

#: Config of the soak: a plugin on the request headers and one on the response headers,
#: so each exchange is two messages (plus what the chain does with them).
SOAK_CONFIG = (
    PASS_THROUGH
    + """  - name: served-by
    type: headers
    config: {response: {set: {x-served-by: asm-proxy}}}
"""
)


@dataclass
class Sample:
    at: float  # seconds since the soak began
    requests: int
    rss: dict[int, int]  # worker pid -> bytes


@dataclass
class SoakResult:
    capacity: float  # requests/s when asked for as many as possible
    rate: float
    seconds: float
    warmup: float
    requests: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # final worker stats

    def growth(self) -> dict[int, float]:
        """Per worker, RSS growth in % from the first sample after warm-up to the last."""
        after = [s for s in self.samples if s.at >= self.warmup]
        if len(after) < 2:
            return {}
        first, last = after[0].rss, after[-1].rss
        return {
            pid: 100.0 * (last[pid] - first[pid]) / first[pid]
            for pid in first
            if pid in last and first[pid]
        }

    def bytes_per_request(self) -> dict[int, float]:
        after = [s for s in self.samples if s.at >= self.warmup]
        if len(after) < 2 or after[-1].requests == after[0].requests:
            return {}
        served = after[-1].requests - after[0].requests
        workers = len(after[0].rss) or 1
        return {
            pid: (after[-1].rss[pid] - after[0].rss[pid]) / (served / workers)
            for pid in after[0].rss
            if pid in after[-1].rss
        }


def measure_capacity(url: str, seconds: float = 15.0, connections: int = 16) -> float:
    """Requests/s when every connection sends its next request as soon as it has an answer."""
    result = Load(url, rate=1e6, connections=connections, seconds=seconds).start().finish()
    return result.total / result.seconds


def soak(
    workdir: Path,
    *,
    seconds: float,
    warmup: float,
    workers: int = 2,
    every: float = 10.0,
    rate: float | None = None,
    report: Any = None,
) -> SoakResult:
    """Soak for `seconds` at `rate` (default: half the measured capacity), sampling each
    worker's RSS every `every` seconds; `report(result)` is called at each sample."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "soak.yaml"
    config.write_text(SOAK_CONFIG)
    listen = f"unix:{workdir}/soak.sock"
    supervisor = SupervisorThread(config, listen=listen, workers=workers)
    try:
        front = Front(workdir, supervisor.addresses)
        try:
            capacity = measure_capacity(front.url)
            result = SoakResult(capacity, rate or capacity / 2, seconds, warmup)
            load = Load(
                front.url, rate=result.rate, connections=8, seconds=seconds, limit=10**8
            ).start()
            start = time.monotonic()
            try:
                while time.monotonic() - start < seconds:
                    time.sleep(min(every, max(0.0, seconds - (time.monotonic() - start))))
                    pids = [p for a in supervisor.addresses for p in procs.workers(a)]
                    result.samples.append(
                        Sample(
                            time.monotonic() - start,
                            load.done,
                            {pid: procs.rss(pid) for pid in pids},
                        )
                    )
                    if report is not None:
                        report(result)
            finally:
                outcome = load.stop()
            result.requests = outcome.total
            result.failed = len(outcome.failed)
            result.statuses = dict(outcome.statuses)
            result.workers = supervisor.stats()
        finally:
            front.close()
    finally:
        supervisor.stop()
    return result
