"""Central mode scaled out: two replicas behind Envoy's health-checked cluster (as rendered),
through mTLS. SIGTERM to one under load costs no request (it says NOT_SERVING, Envoy moves
away, its streams finish); kill -9 costs only the streams it had in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
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
#: Client threads, and how long each load phase lasts (bounded either way).
CLIENTS = 4
PHASE_SECONDS = 4.0


class Load:
    """CLIENTS keep-alive clients sending requests in a loop until stopped (or PHASE cap)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.by_replica: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        give_up = time.monotonic() + 60
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < give_up:
                reply = client.get("/")
                with self._lock:
                    self.statuses[reply.status_code] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

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


def test_sigterm_to_one_replica_under_load_loses_nothing(cluster: Cluster) -> None:
    """Drain: NOT_SERVING first, Envoy's health checks move the load, streams finish."""
    with Load(cluster.envoy.url) as load:
        time.sleep(PHASE_SECONDS / 2)
        before = sum(load.statuses.values())
        cluster.replicas[0].signal(signal.SIGTERM)
        assert cluster.replicas[0].proc.wait(30) == 0
        time.sleep(PHASE_SECONDS / 2)
    after_term = sum(load.statuses.values()) - before
    assert after_term > 50  # the other replica carried on
    assert load.failed == 0, load.statuses
    assert cluster.healthy() == 1


def test_kill_9_of_one_replica_costs_only_its_streams(cluster: Cluster) -> None:
    """No drain: the streams in flight on the killed replica fail (at most one per
    client here); outlier detection and health checks send the rest to the other."""
    with Load(cluster.envoy.url) as load:
        time.sleep(PHASE_SECONDS / 2)
        cluster.replicas[0].signal(signal.SIGKILL)
        cluster.replicas[0].proc.wait(10)
        time.sleep(PHASE_SECONDS / 2)
    print(f"kill -9 under load: {dict(load.statuses)}")
    assert load.failed <= CLIENTS, load.statuses
    assert load.statuses[200] > 100
