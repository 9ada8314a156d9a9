"""`trustForwardedClientCert` through real Envoys, as docs/DEPLOYMENT.md deploys it (the
`central` overlay): asm-proxy behind its own inbound sidecar takes the caller's identity
from the x-forwarded-client-cert that sidecar sets for the certificate it verified,
whatever XFCC the caller sent itself; without the setting an XFCC header is a client's
claim like any other and is ignored.

The workload's Envoy is the one `asm-proxy render` makes; its ext_proc calls carry a
forged XFCC (grpc_service initial_metadata) naming another namespace than its own, as a
misconfigured or compromised client could send. Plugins select by namespace, each setting
x-tenant to its namespace, so the upstream sees whose identity asm-proxy believed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from asm_proxy.envoy_bootstrap import EXT_PROC_FILTER
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.render.placement import ClientTls
from asm_proxy.upstream import SeenRequest
from tests.support.background import ServerThread, Upstreams
from tests.support.certs import CertificateAuthority
from tests.support.rendered import http_filter, rendered_bootstrap
from tests.support.sidecar import inbound_sidecar

pytestmark = pytest.mark.envoy

SERVICE = "asm-proxy.asm-proxy.svc.cluster.local"
CONFIG = """
listen: {listen}
workers: 1
reloadInterval: 0s
trustForwardedClientCert: {trust}
plugins:
  - {{name: seen, type: headers, config: {{request: {{set: {{x-asm-proxy: seen}}}}}}}}
  - name: shop-only
    type: headers
    selector: {{namespace: shop}}
    config: {{request: {{set: {{x-tenant: shop}}}}}}
  - name: billing-only
    type: headers
    selector: {{namespace: billing}}
    config: {{request: {{set: {{x-tenant: billing}}}}}}
"""


def spiffe(namespace: str, account: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{account}"


def forge_xfcc(boot: dict[str, Any], namespace: str) -> None:
    """Have the workload's Envoy send its own XFCC on every ext_proc call, naming
    `namespace` (an element as a sidecar would write it)."""
    forged = f"By={spiffe('asm-proxy', 'asm-proxy')};Hash=00;URI={spiffe(namespace, 'forged')}"
    grpc_service = http_filter(boot, EXT_PROC_FILTER)["grpc_service"]
    grpc_service["initial_metadata"] = [{"key": "x-forwarded-client-cert", "value": forged}]


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    ups = Upstreams("app")
    yield ups
    ups.stop()


def request_through(boot: dict[str, Any], workdir: Path, upstream: Upstreams) -> SeenRequest:
    """One request through the workload's Envoy; what the upstream received."""
    with EnvoyProcess(boot, workdir, name="envoy-workload") as envoy:
        reply = httpx.get(envoy.url + "/", timeout=10)
    assert reply.status_code == 200, reply.text
    seen = upstream["app"].requests[-1]
    assert seen.header("x-asm-proxy") == "seen"  # the exchange went through asm-proxy
    return seen


def test_the_identity_is_the_certificate_the_sidecar_verified(
    tmp_path: Path, upstream: Upstreams, transport: str
) -> None:
    """Trusted: the workload's certificate says shop, its own XFCC says billing; the
    sidecar appends the element of the certificate it verified and asm-proxy takes that
    one: shop's plugin runs, billing's does not."""
    config = tmp_path / "asm-proxy.yaml"
    config.write_text(CONFIG.format(listen="127.0.0.1:18080", trust="true"))
    ca = CertificateAuthority(tmp_path / "ca")
    served = ca.issue("asm-proxy", dns=[SERVICE], client=False)
    client = ca.issue("shop", uris=[spiffe("shop", "cart")], server=False)
    with ExitStack() as stack:
        server = ServerThread(config, transport=transport)  # on 127.0.0.1, as documented
        stack.callback(server.stop)
        sidecar = inbound_sidecar(server.address, served=served, ca=ca.cert_path)
        front = stack.enter_context(EnvoyProcess(sidecar, tmp_path, name="envoy-sidecar"))
        boot = rendered_bootstrap(
            config,
            upstream["app"].port,
            mode="central",
            addresses=[f"127.0.0.1:{front.port}"],
            client_tls=ClientTls(str(client.cert), str(client.key), str(ca.cert_path), SERVICE),
        )
        forge_xfcc(boot, "billing")
        seen = request_through(boot, tmp_path, upstream)
    assert seen.header_values("x-tenant") == ["shop"]


def test_a_clients_xfcc_is_ignored_unless_trusted(
    tmp_path: Path, upstream: Upstreams, transport: str
) -> None:
    """Not trusted (the default): a workload's Envoy on the node socket, known as billing
    by its node metadata, sends an XFCC naming shop; asm-proxy ignores it and runs
    billing's plugin only."""
    socket = tmp_path / "asm.sock"
    config = tmp_path / "asm-proxy.yaml"
    config.write_text(CONFIG.format(listen=f"unix:{socket}", trust="false"))
    server = ServerThread(config, listen=f"unix:{socket}", transport=transport)
    try:
        boot = rendered_bootstrap(config, upstream["app"].port, mode="sidecar")
        boot["node"]["metadata"] = {"NAMESPACE": "billing"}
        forge_xfcc(boot, "shop")
        seen = request_through(boot, tmp_path, upstream)
    finally:
        server.stop()
    assert seen.header_values("x-tenant") == ["billing"]
