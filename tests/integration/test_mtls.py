"""Central mode through the real Envoy: the rendered bootstrap reaches asm-proxy with mTLS;
the workload's identity is its certificate's SPIFFE ID; Envoys without a good certificate
are refused; the serving certificate rotates in place while traffic flows, nothing lost."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from cryptography import x509

from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.render import Options, render_file
from asm_proxy.render.placement import ClientTls
from asm_proxy.tls import CertificateFiles
from tests.support.background import ServerThread, Upstreams
from tests.support.certs import CertificateAuthority, Issued
from tests.support.serve import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.envoy

SERVICE = "asm-proxy.asm-proxy.svc.cluster.local"
SHOP = "spiffe://cluster.local/ns/shop/sa/shop"

CONFIG = """
listen: 127.0.0.1:{port}
reloadInterval: 0s
tls:
  certFile: {dir}/server.crt
  keyFile: {dir}/server.key
  clientCaFile: {ca}
  checkInterval: 0.1s
plugins:
  - name: shop-only
    type: headers
    selector: {{namespace: shop}}
    config: {{request: {{set: {{x-tenant: shop}}}}}}
"""


@dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    serving: Path  # the directory asm-proxy's certificate files are in

    def client(self, name: str, **kw: Any) -> ClientTls:
        issued = self.ca.issue(name, uris=[SHOP], server=False, **kw)
        return ClientTls(str(issued.cert), str(issued.key), str(self.ca.cert_path), SERVICE)

    def install_server_cert(self, issued: Issued) -> None:
        """Replace the serving files in place, as cert-manager does."""
        shutil.copyfile(issued.cert, self.serving / "server.crt")
        shutil.copyfile(issued.key, self.serving / "server.key")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "ca")
    other = CertificateAuthority(tmp_path / "other", name="another CA")
    serving = tmp_path / "serving"
    serving.mkdir()
    pki = Pki(ca, other, serving)
    pki.install_server_cert(ca.issue("server-1", dns=[SERVICE], client=False))
    return pki


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    ups = Upstreams("app")
    yield ups
    ups.stop()


@pytest.fixture
def server(tmp_path: Path, pki: Pki, transport: str) -> Iterator[ServerThread]:
    port = free_port()
    path = tmp_path / "asm-proxy.yaml"
    path.write_text(CONFIG.format(port=port, dir=pki.serving, ca=pki.ca.cert_path))
    thread = ServerThread(path, listen=f"127.0.0.1:{port}", transport=transport)
    yield thread
    thread.stop()


def envoy_for(
    server: ServerThread,
    upstream: Upstreams,
    tmp_path: Path,
    client: ClientTls,
    namespace: str,
    name: str,
    *,
    without_client_cert: bool = False,
    mode: Literal["central", "node"] = "central",
) -> EnvoyProcess:
    config = server.config_path
    boot = render_file(
        config,
        Options(
            mode=mode,
            target="envoy",
            bootstrap=True,
            addresses=(server.address,),
            client_tls=client,
            upstream=f"127.0.0.1:{upstream['app'].port}",
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
        ),
    )["envoy.yaml"]
    boot["node"]["metadata"] = {"NAMESPACE": namespace}
    if without_client_cert:
        (cluster,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == "asm_proxy"]
        del cluster["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
    return EnvoyProcess(boot, tmp_path, name=name)  # `with` starts it


def test_node_mode_over_tcp_with_mtls(
    server: ServerThread, upstream: Upstreams, tmp_path: Path, pki: Pki
) -> None:
    """Node mode for Envoys that cannot mount the node's socket directory: TCP to the
    node-local Service, with mTLS, rendered by `render --mode node` from a config that
    listens on TCP with `tls:`; the certificate proves the namespace as in central mode."""
    client = pki.client("envoy-node")
    with envoy_for(server, upstream, tmp_path, client, "shop", "n1", mode="node") as envoy:
        (cluster,) = [
            c for c in envoy.config["static_resources"]["clusters"] if c["name"] == "asm_proxy"
        ]
        assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"
        reply = httpx.get(envoy.url + "/", timeout=10)
        assert reply.status_code == 200
        assert upstream["app"].requests[-1].header("x-tenant") == "shop"
    with envoy_for(
        server, upstream, tmp_path, client, "shop", "n2", mode="node", without_client_cert=True
    ) as envoy:
        assert httpx.get(envoy.url + "/", timeout=10).status_code == 500
        assert _connect_failures(envoy) >= 1


def test_a_proven_workload_gets_its_plugins(
    server: ServerThread, upstream: Upstreams, tmp_path: Path, pki: Pki
) -> None:
    """mTLS from the rendered cluster; the certificate's namespace selects the plugin."""
    with envoy_for(server, upstream, tmp_path, pki.client("envoy-shop"), "shop", "e1") as envoy:
        reply = httpx.get(envoy.url + "/", timeout=10)
        assert reply.status_code == 200
        assert upstream["app"].requests[-1].header("x-tenant") == "shop"


def test_node_metadata_contradicting_the_certificate_is_refused(
    server: ServerThread, upstream: Upstreams, tmp_path: Path, pki: Pki
) -> None:
    """An Envoy proven as `shop` claiming to be `billing`: refused, fail closed."""
    with envoy_for(server, upstream, tmp_path, pki.client("envoy-liar"), "billing", "e2") as envoy:
        reply = httpx.get(envoy.url + "/", timeout=10)
        assert reply.status_code == 403
        assert reply.text == "workload identity mismatch\n"


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired"])
def test_envoys_without_a_good_certificate_are_refused(
    case: str, server: ServerThread, upstream: Upstreams, tmp_path: Path, pki: Pki
) -> None:
    """The handshake fails: Envoy gets no stream, and fails the request closed (500)."""
    client = pki.client("envoy-good")
    if case == "another CA":
        issued = pki.other_ca.issue("envoy-other", uris=[SHOP], server=False)
        client = ClientTls(str(issued.cert), str(issued.key), client.ca, SERVICE)
    elif case == "expired":
        client = pki.client(
            "envoy-expired",
            starts=datetime.timedelta(days=-10),
            valid_for=datetime.timedelta(days=1),
        )
    bare = case == "no certificate"
    with envoy_for(
        server, upstream, tmp_path, client, "shop", "e3", without_client_cert=bare
    ) as envoy:
        assert httpx.get(envoy.url + "/", timeout=10).status_code == 500
        assert _connect_failures(envoy) >= 1


def _connect_failures(envoy: EnvoyProcess) -> int:
    stats = envoy.stats("cluster.asm_proxy.")
    return stats.get("cluster.asm_proxy.upstream_cx_connect_fail", 0) + stats.get(
        "cluster.asm_proxy.ssl.connection_error", 0
    )


def _serving_serial(address: str, client: ClientTls) -> int:
    """The serial of the certificate asm-proxy presents to a new connection."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=client.ca)
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_rotation_in_place_under_traffic_loses_nothing(
    server: ServerThread, upstream: Upstreams, tmp_path: Path, pki: Pki
) -> None:
    """cert-manager rewrites the files while requests flow: no request fails, new
    connections get the new certificate, no restart; a half-written pair is not taken."""
    client = pki.client("envoy-rotation")
    before = _serving_serial(server.address, client)
    failures: list[int] = []
    sent = 0
    stop = threading.Event()
    with envoy_for(server, upstream, tmp_path, client, "shop", "e4") as envoy:

        def traffic() -> None:
            nonlocal sent
            with httpx.Client(base_url=envoy.url, timeout=10) as http:
                while not stop.is_set() and sent < 2000:
                    sent += 1
                    status = http.get("/").status_code
                    if status != 200:
                        failures.append(status)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            new = pki.ca.issue("server-2", dns=[SERVICE], client=False)
            # A half-written pair: the new certificate with the old key. Refused.
            shutil.copyfile(new.cert, pki.serving / "server.crt")
            # Each new handshake asks asm-proxy for the current files.
            wait_for(lambda: _serving_serial(server.address, client) and _failures(server))
            shutil.copyfile(new.key, pki.serving / "server.key")
            wait_for(lambda: _serving_serial(server.address, client) != before)
        finally:
            stop.set()
            worker.join(30)
    assert sent > 20 and failures == []
    assert _certificates(server).reloads == 1
    after = x509.load_pem_x509_certificate((pki.serving / "server.crt").read_bytes())
    assert _serving_serial(server.address, client) == after.serial_number


def _certificates(server: ServerThread) -> CertificateFiles:
    certificates = server.server.certificates
    assert certificates is not None
    return certificates


def _failures(server: ServerThread) -> bool:
    return _certificates(server).failures >= 1
