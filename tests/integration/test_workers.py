"""Supervisor and worker processes behind a real Envoy: streams spread over the workers, a
dead worker is replaced and costs only its own streams, reloads reach every worker, SIGTERM
drains."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.testing import messages
from asm_proxy.wire import process_stub
from tests.support.background import Upstreams
from tests.support.waiting import wait_for
from tests.support.workers import SupervisorThread, pid_tag_config

pytestmark = pytest.mark.envoy


@dataclass
class WorkerStack:
    supervisor: SupervisorThread
    envoy: EnvoyProcess
    upstreams: Upstreams
    client: httpx.Client

    def get(self, path: str = "/") -> httpx.Response:
        return self.client.get(path)

    def worker_pids(self) -> dict[int, int]:
        return {s["index"]: s["pid"] for s in self.supervisor.stats()}


Factory = Callable[..., WorkerStack]


@pytest.fixture
def workers_stack(tmp_path: Path, upstreams: Upstreams, transport: str) -> Iterator[Factory]:
    made: list[WorkerStack] = []

    def make(
        config: str,
        *,
        workers: int = 2,
        unix: bool = False,
        max_streams: int | None = None,
        message_timeout: str = "30s",
    ) -> WorkerStack:
        n = len(made)
        path = tmp_path / f"workers-{n}.yaml"
        path.write_text(config)
        listen = f"unix:{tmp_path}/w{n}.sock" if unix else "127.0.0.1:0"
        sup = SupervisorThread(path, listen=listen, workers=workers, transport=transport)
        setup = Setup(
            asm_proxy=sup.addresses if unix else sup.addresses[0],
            clusters=upstreams.ports,
            routes=[Route("a")],
            ext_proc=ExtProc(message_timeout=message_timeout),
            asm_proxy_max_streams=max_streams,
        )
        try:
            envoy = EnvoyProcess(bootstrap(setup), tmp_path, name=f"envoy-w{n}").start()
        except Exception:
            sup.stop()
            raise
        client = httpx.Client(base_url=envoy.url, timeout=60)
        s = WorkerStack(sup, envoy, upstreams, client)
        made.append(s)
        return s

    yield make
    for s in made:
        s.client.close()
        s.envoy.stop()
        s.supervisor.stop()


def concurrent_gets(url: str, paths: list[str], parallel: int = 16) -> list[httpx.Response]:
    """GET every path, `parallel` at a time, each thread on its own connection."""
    groups = [paths[i::parallel] for i in range(parallel)]

    def run(group: list[str]) -> list[httpx.Response]:
        with httpx.Client(base_url=url, timeout=60) as client:
            return [client.get(path) for path in group]

    with ThreadPoolExecutor(parallel) as pool:
        return [r for rs in pool.map(run, groups) for r in rs]


def test_tcp_streams_spread_over_workers(workers_stack: Factory) -> None:
    """Two workers share one TCP port (SO_REUSEPORT). Envoy opens a connection per stream in
    flight (max_concurrent_streams: 1), the kernel spreads the connections, and each worker
    serves a share of the streams: counted by the workers themselves."""
    # Each stream waits 20 ms in the plugin, so the 16 client threads really overlap and
    # Envoy needs many connections (a loaded machine could otherwise serialize them onto
    # one connection, which the kernel gives to one worker).
    s = workers_stack(pid_tag_config(delay_ms=20), workers=2, max_streams=1)
    assert len(set(s.supervisor.addresses)) == 1
    responses = concurrent_gets(s.envoy.url, ["/slow"] * 200)
    assert {r.status_code for r in responses} == {200}
    by_worker = s.supervisor.streams_by_worker()
    assert sorted(by_worker) == [0, 1]
    assert sum(by_worker.values()) == 200
    assert all(count > 0 for count in by_worker.values()), by_worker
    seen = {r.header("x-worker-pid") for r in s.upstreams["a"].requests[-200:]}
    assert seen == {str(p) for p in s.worker_pids().values()}


def test_unix_socket_per_worker_round_robin(workers_stack: Factory) -> None:
    """On a Unix socket each worker has its own (PATH.0, PATH.1); Envoy's cluster lists both
    and alternates between them."""
    s = workers_stack(pid_tag_config(), workers=2, unix=True)
    assert [a.rsplit(".", 1)[1] for a in s.supervisor.addresses] == ["0", "1"]
    for address in s.supervisor.addresses:
        assert Path(address[len("unix:") :]).is_socket()
    for _ in range(20):
        assert s.get("/").status_code == 200
    by_worker = s.supervisor.streams_by_worker()
    assert sum(by_worker.values()) == 20
    assert all(count > 0 for count in by_worker.values()), by_worker


def test_reload_reaches_every_worker(workers_stack: Factory) -> None:
    """A good file is taken by every worker; a bad one is refused and all keep the old one."""
    s = workers_stack(pid_tag_config("v1"), workers=2, unix=True)
    s.supervisor.config_path.write_text(pid_tag_config("v2"))
    assert s.supervisor.reload()
    seen = Counter()
    for _ in range(10):
        s.get("/")
        last = s.upstreams["a"].requests[-1]
        seen[(last.header("x-worker-pid"), last.header("x-version"))] += 1
    assert {version for _, version in seen} == {"v2"}
    assert len({pid for pid, _ in seen}) == 2  # both workers answered
    s.supervisor.config_path.write_text("plugins: [{name: x, type: no-such-type}]\n")
    assert s.supervisor.reload() is False
    for _ in range(4):
        s.get("/")
        assert s.upstreams["a"].requests[-1].header("x-version") == "v2"
    stats = s.supervisor.stats()
    assert [st["counters"]["config_reloads"] for st in stats] == [1, 1]


def test_offload_pool_in_a_worker(workers_stack: Factory) -> None:
    """A worker started by the supervisor takes offloadProcesses/offloadThreshold from the
    file and runs a plugin's offload() in its pool: the upstream gets the pool's result, the
    worker counts the call and the bytes that crossed in shared memory."""
    config = """
reloadInterval: 0s
deadline: 20s
offloadProcesses: 1
offloadThreshold: 1024
plugins:
  - {name: swap, type: 'tests.support.workers:SwapCase'}
"""
    s = workers_stack(config, workers=1)
    small, large = b"Small Body", bytes(range(65, 91)) * 2521  # below and above the threshold
    for body in (small, large):
        assert s.client.post("/", content=body).status_code == 200
        assert s.upstreams["a"].requests[-1].body == body.swapcase()
    (stats,) = s.supervisor.stats()
    assert stats["counters"]["offloaded_calls"] == 1  # the small body stayed inline
    assert stats["counters"]["offload_bytes_in"] == len(large)
    assert stats["counters"]["offload_bytes_out"] == len(large)


def test_dead_worker_costs_only_its_streams(workers_stack: Factory) -> None:
    """Slow requests are in flight on both workers; worker 0 is killed. Its streams fail,
    worker 1's finish; worker 0 is replaced by a new process that serves."""
    s = workers_stack(pid_tag_config(delay_ms=1500), workers=2, unix=True)
    before = s.worker_pids()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(concurrent_gets, s.envoy.url, ["/slow"], 1) for _ in range(4)]
        wait_for(
            lambda: [st["in_flight"] for st in s.supervisor.stats()] == [2, 2],
            "two slow streams on each worker",
        )
        in_flight = {st["index"]: st["in_flight"] for st in s.supervisor.stats()}
        os.kill(before[0], signal.SIGKILL)
        responses = [f.result()[0] for f in futures]
    ok = [r for r in responses if r.status_code == 200]
    failed = [r for r in responses if r.status_code != 200]
    assert len(ok) == in_flight[1] and len(failed) == in_flight[0], (in_flight, responses)
    assert {r.json()["headers"]["x-worker-pid"] for r in ok} == {str(before[1])}
    assert all(r.status_code >= 500 for r in failed)
    wait_for(lambda: s.worker_pids().get(0, before[0]) != before[0], "worker 0 replaced")
    after = s.worker_pids()
    assert after[1] == before[1]
    assert s.supervisor.supervisor.restarts == 1
    statuses = set()

    def new_worker_serves() -> bool:
        statuses.add(s.get("/").status_code)
        return s.supervisor.streams_by_worker()[0] > 0

    # Envoy ejected PATH.0 when its connections broke; a passing health check lets it back.
    wait_for(new_worker_serves, "the new worker serving", limit=10)
    assert statuses == {200}


def test_a_restarting_worker_leaves_no_gap_on_its_unix_socket(
    workers_stack: Factory, transport: str
) -> None:
    """nghttp2: the supervisor owns the listening socket, so while worker 0 is dead its
    path keeps accepting, and the requests made meanwhile are served by its replacement
    (grpc.aio binds its own socket: there, they are refused until the new one binds)."""
    if transport != "nghttp2":
        pytest.skip("grpc.aio binds its own sockets; the supervisor cannot hold them")
    s = workers_stack(pid_tag_config(), workers=1, unix=True)
    (address,) = s.supervisor.addresses
    before = s.worker_pids()[0]
    assert s.get("/").status_code == 200
    os.kill(before, signal.SIGKILL)
    # At once, before the replacement can have started: the connect is queued, not refused.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(address[len("unix:") :])
    responses = concurrent_gets(s.envoy.url, ["/"] * 8, parallel=4)
    assert [r.status_code for r in responses] == [200] * 8
    after = s.worker_pids()[0]
    assert after != before
    assert {r.json()["headers"]["x-worker-pid"] for r in responses} == {str(after)}


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status  # type: ignore[no-any-return]


def test_sigterm_drains(workers_stack: Factory) -> None:
    """Drain: health says NOT_SERVING at once while streams are still accepted; after the
    delay new streams are refused while the one in flight finishes; then workers exit."""
    s = workers_stack(pid_tag_config(delay_ms=4000), workers=1)
    address = s.supervisor.addresses[0]
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(concurrent_gets, s.envoy.url, ["/slow"], 1)
        wait_for(lambda: s.supervisor.stats()[0]["in_flight"] == 1, "the slow stream")
        pids = s.supervisor.supervisor.pids
        draining = pool.submit(s.supervisor.shutdown, 2.0, 20.0)
        wait_for(
            lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING"
        )
        during_delay = s.get("/")  # still accepted: Envoy may not have noticed yet
        wait_for(lambda: s.get("/").status_code != 200, "new streams refused")
        assert not slow.done()
        (response,) = slow.result()
        draining.result()
    assert during_delay.status_code == 200
    assert response.status_code == 200
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """`asm-proxy serve` as its own process, its log in a file."""

    def __init__(self, tmp_path: Path, config: str, *args: str) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config = tmp_path / "serve.yaml"
        self.config.write_text(config)
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asm_proxy", "serve", "--config", str(self.config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=tmp_path,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, count: int = 1) -> re.Match[str]:
        def found() -> bool:
            return len(re.findall(pattern, self.log)) >= count or self.proc.poll() is not None

        wait_for(found, pattern)
        match = re.search(pattern, self.log)
        assert match, self.log
        return match

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path, transport: str) -> Iterator[Callable[..., Serve]]:
    made: list[Serve] = []

    def start(config: str, *args: str) -> Serve:
        made.append(Serve(tmp_path, config, *args, "--transport", transport))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_second_signal_stops_at_once(serve: Callable[..., Serve]) -> None:
    """SIGTERM drains and waits for the stream in flight (drainTimeout: 60s); a second
    SIGTERM cuts it and the supervisor and workers exit."""
    s = serve(
        pid_tag_config(delay_ms=60_000, extra="drainDelay: 0s\ndrainTimeout: 60s"),
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
    )
    address = s.wait_log(r"serving on (127\.0\.0\.1:\d+)").group(1)
    pids = [int(p) for p in s.wait_log(r"pids ([\d,]+)").group(1).split(",")]
    errors: list[grpc.RpcError] = []

    def slow_stream() -> None:
        with grpc.insecure_channel(address) as channel:
            try:
                list(
                    process_stub(channel)(
                        iter([messages.request_headers({":path": "/slow"})]), timeout=90
                    )
                )
            except grpc.RpcError as exc:
                errors.append(exc)

    thread = threading.Thread(target=slow_stream)
    thread.start()
    s.wait_log("slow request started")
    s.proc.send_signal(signal.SIGTERM)
    s.wait_log(r"draining: NOT_SERVING; refusing new streams in 0\.0s; \d in flight", count=2)
    assert s.proc.poll() is None  # waiting for the slow stream
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    thread.join(30)
    assert len(errors) == 1 and errors[0].code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )
    assert "second signal: stopping now" in s.log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_port_taken_by_another_program(serve: Callable[..., Serve]) -> None:
    """A port something else listens on is an early, clear error, not a silent share."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        s = serve("plugins: []\n", "--listen", f"127.0.0.1:{port}", "--workers", "2")
        assert s.proc.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use (in use?)" in s.log


def test_unix_socket_in_use_and_one_worker(serve: Callable[..., Serve], tmp_path: Path) -> None:
    """With one worker the Unix socket path is used as given; a second server on the same
    path is refused instead of stealing it."""
    path = tmp_path / "one.sock"
    first = serve("plugins: []\n", "--listen", f"unix:{path}", "--workers", "1")
    first.wait_log("serving on")
    assert path.is_socket()
    second = Serve(tmp_path / "2", "plugins: []\n", "--listen", f"unix:{path}", "--workers", "1")
    try:
        assert second.proc.wait(30) == 1
        assert "another server is serving on it" in second.log
    finally:
        second.close()
    assert health(f"unix:{path}") == health_pb2.HealthCheckResponse.SERVING
