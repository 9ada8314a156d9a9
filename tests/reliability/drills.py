"""The fault drills, each a function the test suite runs short and `python -m
tests.reliability` runs long: what was done, what it cost, measured from outside."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asm_proxy.config import ServerSettings
from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.unix_sockets import in_use
from tests.reliability import procs
from tests.reliability.load import Load
from tests.reliability.stack import Front, Serve, wait_for

#: The Envoy config as it was before this suite's issue: no health checks, no outlier
#: detection, no retries, one connection for ever, streams reset at their end.
ENVOY_BEFORE: dict[str, Any] = {
    "ext_proc": ExtProc(message_timeout="1s", retries=False),
    "asm_proxy_health_checks": False,
    "asm_proxy_outlier_detection": False,
    "asm_proxy_max_requests_per_connection": None,
    "runtime_flags": False,
}

PASS_THROUGH = """
reloadInterval: 0s
deadline: 500ms
plugins:
  - name: tag
    type: headers
    config: {request: {set: {x-drill: "1"}}}
"""


# -- the supervisor killed while it restarts a worker ----------------------------------


@dataclass
class OrphanRun:
    delay: float  # supervisor SIGKILLed this long after the worker was (or after...)
    after: str  # ..."worker killed", or "replacement serving"
    restarted: bool  # the replacement was already serving when the supervisor died
    workers_seen: int  # worker processes alive after the supervisor's death
    stopped_after: float | None  # seconds until none was left (None: still there at the limit)
    still_listening: bool  # something still accepted on the socket afterwards


@dataclass
class OrphanResult:
    runs: list[OrphanRun] = field(default_factory=list)
    load: str = ""

    @property
    def max_stop(self) -> float | None:
        times = [r.stopped_after for r in self.runs]
        return None if None in times else max(t for t in times if t is not None)


def supervisor_killed_during_restart(
    workdir: Path,
    delays: list[float],
    *,
    serving: tuple[float, ...] | list[float] = (),
    limit: float = 5.0,
) -> OrphanResult:
    """For each delay: serve with one worker behind Envoy under load, SIGKILL the worker
    (the supervisor starts a new one), SIGKILL the supervisor `delay` seconds later, then
    time how long any worker process of it stays alive. `serving`: delays counted from
    the moment the supervisor says the replacement serves (whatever the machine's speed)."""
    path = workdir / "orphan.sock"
    listen = f"unix:{path}"
    result = OrphanResult()
    front = Front(workdir, [listen])
    load = Load(front.url, rate=100, connections=4, seconds=len(delays) * 10 + 30).start()
    try:
        points = [(d, "worker killed") for d in delays]
        points += [(d, "replacement serving") for d in serving]
        for i, (delay, after) in enumerate(points):
            serve = Serve(workdir / f"run-{i}", PASS_THROUGH, listen=listen, workers=1)
            try:
                (worker,) = serve.first_pids
                os.kill(worker, signal.SIGKILL)
                if after == "replacement serving":
                    serve.wait_log("restarted as pid")
                time.sleep(delay)
                restarted = "restarted as pid" in serve.log
                seen = set(procs.workers(listen))  # a worker may be gone before a first look
                serve.proc.kill()
                died = time.monotonic()
                last = died
                while time.monotonic() - died < limit:
                    alive = procs.workers(listen)
                    if alive:
                        seen.update(alive)
                        last = time.monotonic()
                    elif time.monotonic() - last > 0.3:
                        break  # nothing for a while (a fork about to exec shows up in time)
                    time.sleep(0.002)
                stopped = None if procs.workers(listen) else (last - died if seen else 0.0)
                serve.proc.wait(10)
                result.runs.append(
                    OrphanRun(
                        delay,
                        after,
                        restarted,
                        len(seen),
                        stopped,
                        path.exists() and in_use(path),
                    )
                )
            finally:
                for pid in procs.workers(listen):
                    os.kill(pid, signal.SIGKILL)
                serve.close()
    finally:
        result.load = load.stop().summary()
        front.close()
    return result


# -- a worker killed under load ----------------------------------------------------------


@dataclass
class KillResult:
    transport: str
    failed_per_kill: list[int]
    restart_ms: list[int]  # worker death -> replacement serving, from the supervisor's log
    load: str = ""
    failures: list[str] = field(default_factory=list)  # what the failed requests got

    @property
    def max_failed(self) -> int:
        return max(self.failed_per_kill, default=0)


def worker_kills(
    workdir: Path,
    *,
    transport: str,
    kills: int,
    rate: float = 200,
    connections: int = 8,
    every: float = 3.0,
    envoy: Mapping[str, Any] | None = None,
    server: str | None = None,
) -> KillResult:
    """Two workers behind Envoy at `rate` requests/s; SIGKILL one worker (alternating) every
    `every` seconds and count the requests that failed around each kill. `envoy` goes to
    Envoy's bootstrap Setup (to measure without health checks, retries, ...); `server` is
    asm-proxy's transport (default: stack.TRANSPORT)."""
    listen = f"unix:{workdir}/kill.sock" if transport == "unix" else "127.0.0.1:0"
    serve = Serve(workdir, PASS_THROUGH, listen=listen, workers=2, transport=server)
    front = Front(workdir, serve.addresses, envoy)
    result = KillResult(transport, [], [])
    load = Load(front.url, rate=rate, connections=connections, seconds=kills * every + 30).start()
    marks: list[float] = []
    try:
        load.wait_for(int(rate))  # a second of load before the first fault
        for n in range(kills):
            # Unix: worker i listens on PATH.i; TCP: all share the address.
            victims = procs.workers(serve.addresses[n % len(serve.addresses)])
            victim = victims[n % len(victims)]
            marks.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)
            serve.wait_log("restarted as pid", count=n + 1)
            time.sleep(every)
    finally:
        outcome = load.stop()
        result.load = outcome.summary()
        front.close()
        serve.close()
    for mark in marks:
        failed = [
            o
            for o in outcome.between(mark - 1.0, mark + every - 0.5)
            if o.status not in outcome.ok_statuses
        ]
        result.failed_per_kill.append(len(failed))
        result.failures += sorted({f"{o.status} {o.error}".strip() for o in failed})
    result.restart_ms = [
        int(m) for m in re.findall(r"serving (\d+)ms after the old one died", serve.log)
    ]
    return result


# -- one of two instances drained under load -------------------------------------------

#: How long `serve` may take to drain after SIGTERM, as documented (docs/ARCHITECTURE.md,
#: DEPLOYMENT.md): drainDelay, then drainTimeout for the streams in flight (the drills'
#: config keeps both defaults).
DRAIN_DEADLINE = ServerSettings().drain_delay + ServerSettings().drain_timeout


@dataclass
class DrainResult:
    transport: str
    streams_before: dict[str, int]  # streams Envoy had sent each instance before the SIGTERM
    after_sigterm: int  # requests started from the SIGTERM to the end of the load
    during_drain: int  # ...of those, started before the instance had exited
    after_exit: int  # ...and after it (all on the other instance)
    failed: int  # of after_sigterm
    failed_before: int  # requests started before the SIGTERM that failed
    exit_code: int | None  # the drained instance's (None: still running at DRAIN_DEADLINE)
    drain_seconds: float  # SIGTERM -> the drained instance's supervisor exited (a figure)
    load: str = ""


def drain_one_of_two(
    workdir: Path,
    *,
    transport: str,
    rate: float = 200,
    connections: int = 8,
    workers: int = 2,
    after: int = 400,
    envoy: Mapping[str, Any] | None = None,
) -> DrainResult:
    """Two `asm-proxy serve` instances behind one Envoy; SIGTERM one under load (default
    drainDelay 1 s) and count the requests that failed from then until `after` requests
    started after it exited (without health checks Envoy keeps sending to the endpoints
    that are gone). The load is bounded by those counts, and by DRAIN_DEADLINE."""
    instances = []
    for name in ("a", "b"):
        listen = f"unix:{workdir}/{name}.sock" if transport == "unix" else "127.0.0.1:0"
        instances.append(Serve(workdir / name, PASS_THROUGH, listen=listen, workers=workers))
    a, b = instances
    front = Front(workdir, a.addresses + b.addresses, envoy)
    load = Load(front.url, rate=rate, connections=connections, seconds=DRAIN_DEADLINE + 60)
    load.start()
    exit_code: int | None = None
    try:
        load.wait_for(int(rate))  # a second of load before the fault
        by_endpoint = front.streams_by_endpoint()
        before = {
            name: sum(by_endpoint.get(address, 0) for address in serve.addresses)
            for name, serve in (("a", a), ("b", b))
        }
        start = time.monotonic()
        a.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            exit_code = a.proc.wait(DRAIN_DEADLINE)
        end = time.monotonic()
        if exit_code is not None:
            # Requests in flight at the exit finish first (at most one per connection).
            load.wait_for(load.done + connections + after, timeout=after / rate * 4 + 30)
    finally:
        outcome = load.stop()
        front.close()
        for serve in instances:
            serve.close()
    window = outcome.between(start, float("inf"))
    failed = [o for o in window if o.status not in outcome.ok_statuses]
    return DrainResult(
        transport,
        before,
        len(window),
        len(outcome.between(start, end)),
        len(outcome.between(end, float("inf"))),
        len(failed),
        len(outcome.failed) - len(failed),
        exit_code,
        end - start,
        outcome.summary(),
    )


# -- workers recycled under load -------------------------------------------------------


@dataclass
class RecycleResult:
    transport: str
    trigger: str
    recycles: int  # during the load (the supervisor's log when the load had run out)
    requests: int
    failed: int
    load: str = ""
    failures: list[str] = field(default_factory=list)  # Envoy's response details of those


def recycling_under_load(
    workdir: Path,
    *,
    transport: str,
    requests: int,
    rate: float = 300,
    trigger: str = "maxStreamsPerWorker: 1000",
    plugins: str = "",
    envoy: Mapping[str, Any] | None = None,
) -> RecycleResult:
    """Two workers behind Envoy, `requests` requests at `rate` a second with a recycling
    limit (`trigger`, a config line) low enough to be reached several times; count the
    recycles (the supervisor's log) and the failed requests."""
    listen = f"unix:{workdir}/recycle.sock" if transport == "unix" else "127.0.0.1:0"
    config = PASS_THROUGH.replace("reloadInterval: 0s\n", f"reloadInterval: 0s\n{trigger}\n")
    serve = Serve(workdir, config + plugins, listen=listen, workers=2)
    access_log = workdir / "access.log"
    try:
        front = Front(workdir, serve.addresses, {**(envoy or {}), "access_log": str(access_log)})
        try:
            outcome = Load.counted(front.url, requests, rate=rate).start().finish()
            recycles = serve.count("recycled: pid")
            failures = envoy_failures(access_log, outcome.total) if outcome.failed else []
        finally:
            front.close()
    finally:
        serve.close()
    return RecycleResult(
        transport,
        trigger,
        recycles,
        outcome.total,
        len(outcome.failed),
        outcome.summary(),
        failures,
    )


def envoy_failures(access_log: Path, lines: int) -> list[str]:
    """Code and response details of every non-200 line of Envoy's access log, once it has
    `lines` lines (Envoy writes it every 50 ms; a request that never reached Envoy has
    none, so after 10 s whatever lines there are)."""

    def entries() -> list[dict[str, Any]]:
        text = access_log.read_text() if access_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    with contextlib.suppress(AssertionError):  # diagnostics: what there is will do
        wait_for(lambda: len(entries()) >= lines, f"{lines} lines in Envoy's access log", 10)
    return [f"{e.get('code')} {e.get('details')}" for e in entries() if e.get("code") != 200]


# -- bad clients ---------------------------------------------------------------------------


@dataclass
class BadClientsResult:
    sent: dict[str, int]
    statuses: dict[str, int]  # gRPC status name -> count
    seconds: float
    log_lines: dict[str, int]  # what the asm-proxy log says about them


def bad_clients(workdir: Path, *, count: int, threads: int = 4) -> BadClientsResult:
    """`count` each of: a stream of bytes that are not a ProcessingRequest, a Check of bytes
    that are not a CheckRequest, a stream with request headers twice; from `threads`
    clients at once, against `asm-proxy serve` (one worker, TCP). Then what it logged."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from asm_proxy.testing import messages
    from asm_proxy.wire import ext_proc

    twice = ext_proc.ProcessingRequest.SerializeToString(
        messages.request_headers({":path": "/"}, False)
    )
    kinds = {
        "garbage stream": (
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            [b"\xff\xfe garbage"],
        ),
        "garbage Check": ("/envoy.service.auth.v3.Authorization/Check", b"\xff\xfe garbage"),
        "headers twice": ("/envoy.service.ext_proc.v3.ExternalProcessor/Process", [twice, twice]),
    }
    config = (
        "reloadInterval: 0s\nplugins:\n  - {name: body, type: 'tests.support.plugins:UpperBody'}\n"
    )
    serve = Serve(workdir, config, listen="127.0.0.1:0", workers=1)
    statuses: dict[str, int] = {}
    try:

        def run(kind: str) -> list[str]:
            method, payload = kinds[kind]
            out = []
            with grpc.insecure_channel(serve.addresses[0]) as channel:
                for _ in range(count // threads):
                    try:
                        if isinstance(payload, list):
                            list(channel.stream_stream(method)(iter(payload), timeout=10))
                        else:
                            channel.unary_unary(method)(payload, timeout=10)
                        out.append("OK")
                    except grpc.RpcError as exc:
                        out.append(exc.code().name)
            return out

        start = time.monotonic()
        with ThreadPoolExecutor(threads * len(kinds)) as pool:
            jobs = [pool.submit(run, kind) for kind in kinds for _ in range(threads)]
            for job in jobs:
                for name in job.result():
                    statuses[name] = statuses.get(name, 0) + 1
        seconds = time.monotonic() - start
        serve.wait_log("more client faults in the last", limit=30)  # the period's summary
        log = serve.log
    finally:
        serve.close()
    return BadClientsResult(
        {kind: count // threads * threads for kind in kinds},
        statuses,
        seconds,
        {
            "WARNING refused (client's fault)": log.count("(client's fault"),
            "summaries (N more ... suppressed)": log.count("more client faults"),
            "suppressed in summaries": sum(
                int(n) for n in re.findall(r"(\d+) more client faults", log)
            ),
            "ERROR": log.count(" ERROR "),
            "Traceback": log.count("Traceback"),
        },
    )


# -- memory per request --------------------------------------------------------------------


@dataclass
class MemoryRun:
    server: str
    envoy: str  # which Envoy config
    requests: int  # served between the two RSS samples
    rss_after_warmup: int
    rss_at_end: int
    envoy_resets: int  # streams Envoy reset (http2.tx_reset)

    @property
    def bytes_per_request(self) -> float:
        return (self.rss_at_end - self.rss_after_warmup) / self.requests if self.requests else 0.0


MEMORY_VARIANTS: list[tuple[str, str, Mapping[str, Any] | None]] = [
    ("asm-proxy worker", "before", ENVOY_BEFORE),
    ("asm-proxy worker", "now, without graceful close", {"runtime_flags": False}),
    ("asm-proxy worker", "now", None),
    ("bare grpc.aio (perf/floor.py)", "before", ENVOY_BEFORE),
    ("bare grpc.aio (perf/floor.py)", "now", None),
]


def memory_per_request(
    workdir: Path,
    *,
    seconds: float = 180,
    warmup: float = 60,
    rate: float = 190,
    variants: list[tuple[str, str, Mapping[str, Any] | None]] = MEMORY_VARIANTS,
) -> list[MemoryRun]:
    """RSS growth per request of one serving process at `rate` requests/s, after `warmup`:
    asm-proxy's worker and a bare grpc.aio server (perf/floor.py), behind the Envoy config
    as it was before this suite's issue, as now, and as now but resetting streams at their
    end (Envoy's default)."""
    import subprocess
    import sys

    from tests.reliability.stack import ROOT

    runs = []
    for n, (server, envoy, setup) in enumerate(variants):
        work = workdir / str(n)
        work.mkdir(parents=True)
        listen = f"unix:{work}/mem.sock"
        serve: Serve | None = None
        floor: subprocess.Popen[str] | None = None
        if server.startswith("asm-proxy"):
            serve = Serve(work, PASS_THROUGH, listen=listen, workers=1)
            (pid,) = procs.workers(listen)
        else:
            floor = subprocess.Popen(
                [sys.executable, "-m", "perf.floor", "--listen", listen],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert floor.stdout is not None and "serving on" in floor.stdout.readline()
            pid = floor.pid
        try:
            front = Front(work, [listen], setup)
            try:
                load = Load(front.url, rate=rate, connections=8, seconds=seconds).start()
                time.sleep(warmup)
                first, done = procs.rss(pid), load.done
                load.finish()
                stat = "cluster.asm_proxy.http2.tx_reset"
                runs.append(
                    MemoryRun(
                        server,
                        envoy,
                        load.done - done,
                        first,
                        procs.rss(pid),
                        front.envoy.stats(stat).get(stat, 0),
                    )
                )
            finally:
                front.close()
        finally:
            if serve is not None:
                serve.close()
            if floor is not None:
                floor.terminate()
                floor.wait(10)
    return runs


# -- streams spread over TCP workers -------------------------------------------------------


@dataclass
class SpreadResult:
    envoy: str
    requests: int  # the load's, all answered...
    failed: int  # ...but these
    per_window: list[list[int]]  # streams each worker started, per window (the last: the rest)
    total: list[int]


def tcp_spread(
    workdir: Path,
    *,
    requests: int,
    window: float = 10.0,
    rate: float = 200,
    envoy: Mapping[str, Any] | None = None,
    name: str = "",
) -> SpreadResult:
    """Two TCP workers behind Envoy, `requests` requests at `rate` a second over 8
    connections: how many streams each worker started, per `window` seconds (the workers'
    own counts)."""
    from tests.support.workers import SupervisorThread

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "spread.yaml"
    config.write_text(PASS_THROUGH)
    supervisor = SupervisorThread(config, listen="127.0.0.1:0", workers=2)
    windows: list[list[int]] = []
    try:
        front = Front(workdir, supervisor.addresses[:1], envoy)
        try:
            before = supervisor.streams_by_worker()
            load = Load.counted(front.url, requests, rate=rate).start()
            while True:
                ran_out = load.join(window)
                now = supervisor.streams_by_worker()
                streams = [now[i] - before.get(i, 0) for i in sorted(now)]
                if any(streams) or not windows:
                    windows.append(streams)
                before = now
                if ran_out:
                    break
            outcome = load.stop()
        finally:
            front.close()
    finally:
        supervisor.stop()
    return SpreadResult(
        name,
        outcome.total,
        len(outcome.failed),
        windows,
        [sum(w[i] for w in windows) for i in range(2)],
    )
