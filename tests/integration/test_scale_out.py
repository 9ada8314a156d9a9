"""Central mode scaled out: two replicas behind Envoy's health-checked cluster (as rendered),
through mTLS. SIGTERM to one under load costs no request (it says NOT_SERVING, Envoy moves
away, its streams finish); kill -9 costs only the streams it had in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.render import Options, render_file
from asm_proxy.render.placement import ClientTls
from tests.support.background import Upstreams
from tests.support.certs import CertificateAuthority
from tests.support.serve import Replica, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.envoy

SERVICE = "asm-proxy.asm-proxy.svc.cluster.local"
CONFIG = """
listen: 127.0.0.1:{port}
workers: 1
reloadInterval: 0s
drainDelay: 1s
drainTimeout: 5s
tls: {{certFile: {cert}, keyFile: {key}, clientCaFile: {ca}}}
plugins:
  - {{name: tag, type: headers, config: {{request: {{set: {{x-replica: '{port}'}}}}}}}}
"""
#: Client threads; answers before the fault (both replicas among them) and after it.
CLIENTS = 4
BEFORE = 100
AFTER = 100
#: Seconds any phase may take (a bound, not a pace: the phases end on counts).
LIMIT = 60.0


@dataclass(frozen=True)
class Answer:
    start: float  # time.monotonic() when the request was sent
    status: int  # 0: no HTTP answer
    replica: str  # the x-replica the serving replica's plugin set ("" if none)


class Load:
    """CLIENTS keep-alive clients sending requests in a loop until stopped (or LIMIT);
    every answer is kept with the replica that served it (the echo upstream shows the
    x-replica header each replica's plugin sets)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        give_up = time.monotonic() + LIMIT
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < give_up:
                start = time.monotonic()
                try:
                    reply = client.get("/")
                except httpx.HTTPError:
                    answer = Answer(start, 0, "")
                else:
                    replica = (
                        reply.json()["headers"].get("x-replica", "") if reply.is_success else ""
                    )
                    answer = Answer(start, reply.status_code, replica)
                with self._lock:
                    self.answers.append(answer)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def since(self, start: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.start >= start]

    def by_replica(self, since: float = 0.0) -> Counter[str]:
        """Answers 200 by replica, of the requests sent from `since`."""
        return Counter(a.replica for a in self.since(since) if a.status == 200)

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        wait_for(check, what, LIMIT)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.since(0.0))

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


class Cluster:
    """Two replicas with one CA, and the rendered central-mode Envoy in front of them."""

    def __init__(self, tmp_path: Path, upstream: Upstreams, transport: str) -> None:
        ca = CertificateAuthority(tmp_path / "ca")
        server = ca.issue("server", dns=[SERVICE], client=False)
        client = ca.issue("envoy", uris=["spiffe://cluster.local/ns/shop/sa/shop"], server=False)
        self.replicas: list[Replica] = []
        for i in range(2):
            port = free_port()
            config = tmp_path / f"replica-{i}.yaml"
            config.write_text(
                CONFIG.format(port=port, cert=server.cert, key=server.key, ca=ca.cert_path)
            )
            self.replicas.append(Replica(config, port, transport))
        boot = render_file(
            tmp_path / "replica-0.yaml",
            Options(
                mode="central",
                target="envoy",
                bootstrap=True,
                addresses=tuple(r.address for r in self.replicas),
                client_tls=ClientTls(str(client.cert), str(client.key), str(ca.cert_path), SERVICE),
                upstream=f"127.0.0.1:{upstream['app'].port}",
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
            ),
        )["envoy.yaml"]
        self.envoy = EnvoyProcess(boot, tmp_path, name="envoy-scale").start()

    def healthy(self) -> int:
        return self.envoy.stats("cluster.asm_proxy.membership_healthy")[
            "cluster.asm_proxy.membership_healthy"
        ]

    def stop(self) -> None:
        self.envoy.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    ups = Upstreams("app")
    yield ups
    ups.stop()


@pytest.fixture
def cluster(tmp_path: Path, upstream: Upstreams, transport: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, upstream, transport)
    try:
        wait_for(lambda: made.healthy() == 2)
        yield made
    finally:
        made.stop()


def both_replicas_serve(cluster: Cluster, load: Load) -> None:
    """Wait until BEFORE answers came back, from both replicas: the fault hits one that
    carries traffic."""
    ports = {str(r.port) for r in cluster.replicas}
    load.wait_for(
        lambda: set(load.by_replica()) == ports and load.by_replica().total() >= BEFORE,
        f"{BEFORE} answers from both replicas {sorted(ports)}",
    )


def test_sigterm_to_one_replica_under_load_loses_nothing(cluster: Cluster) -> None:
    """Drain: NOT_SERVING first, Envoy's health checks move the load, streams finish."""
    drained, other = cluster.replicas
    with Load(cluster.envoy.url) as load:
        both_replicas_serve(cluster, load)
        drained.signal(signal.SIGTERM)
        assert drained.proc.wait(30) == 0
        exited = time.monotonic()
        load.wait_for(lambda: len(load.since(exited)) >= AFTER, f"{AFTER} answers after it")
    assert load.by_replica(since=exited) == {str(other.port): len(load.since(exited))}
    assert load.failed == 0, load.statuses
    assert cluster.healthy() == 1


def test_kill_9_of_one_replica_costs_only_its_streams(cluster: Cluster) -> None:
    """No drain: the streams in flight on the killed replica fail (at most one per
    client here); outlier detection and health checks send the rest to the other."""
    killed, other = cluster.replicas
    with Load(cluster.envoy.url) as load:
        both_replicas_serve(cluster, load)
        killed.signal(signal.SIGKILL)
        killed.proc.wait(10)
        dead = time.monotonic()
        load.wait_for(
            lambda: load.by_replica(since=dead)[str(other.port)] >= AFTER,
            f"{AFTER} answers from the other replica",
        )
    print(f"kill -9 under load: {dict(load.statuses)}")
    assert load.failed <= CLIENTS, load.statuses
    assert set(load.by_replica(since=dead)) == {str(other.port)}
