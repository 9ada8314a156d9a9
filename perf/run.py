"""Running one measurement: server, proxy Envoy, load, and what it all cost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asm_proxy.config import ConfigError
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.registry import UnknownPluginType, resolve
from asm_proxy.supervisor import Supervisor
from perf.envoys import proxy_config
from perf.load import LoadResult, Shape, run_python, run_wrk
from perf.measure import CpuWindow, rss_per_stream
from perf.scenarios import Scenario, materialize

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Options:
    seconds: float = 10.0
    warmup: float = 2.0
    connections: int = 16
    threads: int = 2
    envoy_concurrency: int = 2
    socket: str = "unix"  # how Envoy reaches the ext_proc server: unix or tcp
    streams: int = 1000  # open streams for the RSS measurement
    load: str = "wrk"  # wrk or python
    #: asm-proxy workers for the scenarios that do not set their own (the workers sweep
    #: does): one, like the floor, so CPU per request compares like with like.
    workers: int | None = 1


class LoopThread:
    """An asyncio loop on a thread, for the in-process supervisor."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class Server:
    """The ext_proc / ext_authz server of one measurement."""

    roots: list[int]
    address: str  # where Envoy's cluster points (one endpoint)
    endpoints: list[str]  # every endpoint (one per worker on Unix sockets)
    stats: list[dict[str, Any]]

    def stop(self) -> None:
        raise NotImplementedError

    def collect(self) -> None:
        self.stats = []


class FloorServer(Server):
    """A bare ext_proc server: grpc.aio's (perf.floor), or another engine's (perf.floors)."""

    def __init__(self, listen: str, workdir: Path, engine: str = "") -> None:
        self._log = open(workdir / "floor.log", "w+")  # noqa: SIM115 - closed in stop()
        module = ["perf.floors", engine] if engine else ["perf.floor"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module, "--listen", listen],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            self.stop()
            self._log.seek(0)
            raise RuntimeError(f"the floor server did not start: {line}{self._log.read()}")
        self.address = match.group(1)
        self.endpoints = [self.address]
        self.roots = [self.proc.pid]
        self.stats = []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class AsmProxyServer(Server):
    """asm-proxy's supervisor (in this process) and its worker processes."""

    def __init__(self, config_path: Path, listen: str, workers: int | None, transport: str) -> None:
        self._loop = LoopThread()
        self.supervisor = Supervisor(
            config_path, listen=listen, workers=workers, transport=transport
        )
        try:
            self._loop.call(self.supervisor.start())
        except BaseException:
            self._loop.close()
            raise
        self.endpoints = list(dict.fromkeys(self.supervisor.addresses))  # TCP: one shared
        self.address = self.endpoints[0]
        self.roots = self.supervisor.pids
        self.stats = []

    def collect(self) -> None:
        self.stats = self._loop.call(self.supervisor.stats())

    def stop(self) -> None:
        try:
            self._loop.call(self.supervisor.shutdown(0, 1))
        finally:
            self._loop.close()


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def plugin_missing(scenario: Scenario) -> str | None:
    for type_name in scenario.needs:
        try:
            resolve(type_name)
        except UnknownPluginType:
            return f"skipped: plugin type {type_name} not installed"
    return None


def _listen(options: Options, workdir: Path, name: str) -> str:
    if options.socket == "unix":
        return f"unix:{workdir}/{name}.sock"
    return "127.0.0.1:0"


def _probe(url: str, shape: Shape) -> int:
    body = shape.body()
    request = urllib.request.Request(
        url + shape.path, data=body or None, method=shape.method, headers=dict(shape.all_headers())
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _load(url: str, shape: Shape, options: Options, seconds: float, workdir: Path) -> LoadResult:
    if options.load == "wrk":
        return run_wrk(
            url,
            shape,
            connections=options.connections,
            threads=options.threads,
            seconds=seconds,
            workdir=workdir,
        )
    return run_python(url, shape, connections=options.connections, seconds=seconds)


def measure(
    scenario: Scenario, options: Options, upstream_port: int, workdir: Path
) -> dict[str, Any]:
    """Run one scenario; a row of the results (with `status` "ok", "skipped: ..." or
    "error: ...")."""
    row: dict[str, Any] = {
        "scenario": scenario.name,
        "title": scenario.title,
        "group": scenario.group,
        "x": scenario.x,
        "server": scenario.server,
        "shape": scenario.shape.name,
        "transport": scenario.transport if scenario.server == "asm-proxy" else None,
        "base": scenario.name.split("@")[0],
    }
    missing = plugin_missing(scenario)
    if missing:
        row["status"] = missing
        return row
    scenario = materialize(scenario)
    workdir = workdir / re.sub(r"[^a-z0-9.-]+", "_", scenario.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server: Server | None = None
    envoy: EnvoyProcess | None = None
    try:
        if scenario.server == "floor":
            server = FloorServer(_listen(options, workdir, "floor"), workdir, scenario.config)
        elif scenario.server == "asm-proxy":
            config = workdir / "asm-proxy.yaml"
            config.write_text(scenario.config)
            try:
                with _environment(scenario.env):  # the workers copy it when they start
                    server = AsmProxyServer(
                        config,
                        _listen(options, workdir, "asm"),
                        scenario.workers or options.workers,
                        scenario.transport,
                    )
            except ConfigError as exc:
                if not scenario.needs:
                    raise
                row["status"] = "skipped: config refused: " + "; ".join(
                    str(p) for p in exc.problems
                )
                return row
            row["workers"] = len(server.roots)
        if server is not None:
            # Weighed on the fresh server, before any load: memory that load grew and freed
            # would be reused by the probe's streams and hide their cost.
            if scenario.ext_proc is None:
                row["rss_per_stream"] = "no stream: one unary Check per request"
            elif options.streams:
                per_stream = rss_per_stream(
                    server.address, server.roots, options.streams, scenario.shape
                )
                if per_stream is None:
                    row["rss_per_stream"] = "streams end after the headers"
                else:
                    row["rss_per_stream_bytes"] = round(per_stream)
        envoy_config = proxy_config(
            upstream_port,
            server.endpoints if server is not None else None,
            scenario.ext_proc,
            scenario.ext_authz,
            max_streams=1 if options.socket == "tcp" else None,
        )
        envoy = EnvoyProcess(
            envoy_config, workdir, name="proxy", concurrency=options.envoy_concurrency
        ).start()
        status = _probe(envoy.url, scenario.shape)
        if status != 200:
            raise RuntimeError(f"a probe request got {status}; see {workdir}")
        if options.warmup > 0:
            _load(envoy.url, scenario.shape, options, options.warmup, workdir)
        if server is not None:
            server.collect()
            before = _sum_counters(server.stats)
        server_cpu = CpuWindow(server.roots if server is not None else [])
        envoy_cpu = CpuWindow([envoy.proc.pid] if envoy.proc is not None else [])
        server_cpu.start()
        envoy_cpu.start()
        result = _load(envoy.url, scenario.shape, options, options.seconds, workdir)
        server_cpu.stop()
        envoy_cpu.stop()
        requests = max(1, result.requests)
        row.update(
            status="ok",
            load=result.tool,
            requests=result.requests,
            seconds=round(result.seconds, 3),
            errors=result.errors,
            rps=round(result.rps, 1),
            p50_ms=round(result.p50_ms, 3),
            p99_ms=round(result.p99_ms, 3),
            envoy_cpu_us=round(envoy_cpu.seconds / requests * 1e6, 1),
        )
        if server is not None:
            row["server_cpu_us"] = round(server_cpu.seconds / requests * 1e6, 1)
            server.collect()
            after = _sum_counters(server.stats)
            if after:
                delta = {k: after[k] - before.get(k, 0) for k in after}
                streams = max(1, delta["streams_started"])
                row["messages_per_stream"] = round(delta["messages"] / streams, 2)
                row["body_bytes_joined_per_request"] = round(delta["body_bytes_joined"] / streams)
                row["body_bytes_sent_per_request"] = round(
                    delta.get("body_bytes_sent", 0) / streams
                )
                row["streams_per_worker"] = [
                    s["counters"]["streams_started"] for s in sorted(server.stats, key=_index)
                ]
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {exc}"
    finally:
        if envoy is not None:
            envoy.stop()
        if server is not None:
            server.stop()
    return row


def _index(stats: dict[str, Any]) -> int:
    return int(stats["index"])


def _sum_counters(stats: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for worker in stats:
        for key, value in worker["counters"].items():
            total[key] = total.get(key, 0) + value
    return total


def machine() -> dict[str, Any]:
    """What the numbers were taken on."""
    import platform

    import grpc

    from asm_proxy.envoy_process import find_envoy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        envoy_version = subprocess.run(
            [find_envoy(), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        envoy_version = re.sub(r"^.*version: ", "", envoy_version)
    except Exception as exc:
        envoy_version = f"unknown ({exc})"
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "envoy": envoy_version,
        "load_average_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
