"""Namespace isolation through one asm-proxy (`serve`, as a central Deployment runs it) and
the real Envoy: two namespaces' workloads with identical labels (`app: helloworld`), each
namespace's own plugin file answering `foo: bar` with its own status (444 in one, 555 in
the other), never crossed — not when one file is reloaded, not when it is broken, and a
namespace whose file never loaded fails closed. The workload's namespace is the one its
mTLS certificate proves; the labels come from Envoy's node metadata."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.render import Options, render_file
from asm_proxy.render.placement import ClientTls
from tests.support.background import Upstreams
from tests.support.certs import CertificateAuthority
from tests.support.serve import Replica, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.envoy

SERVICE = "asm-proxy.asm-proxy.svc.cluster.local"
MAIN = """
listen: 127.0.0.1:{port}
workers: 2
reloadInterval: 0.2s
tls: {{certFile: {cert}, keyFile: {key}, clientCaFile: {ca}}}
namespaces: {{directory: namespaces}}
plugins: []
"""
#: A namespace's answer to `foo: bar`, for workloads labelled app: helloworld.
ANSWER = """
plugins:
  - name: foo-bar
    type: direct_response
    selector: {{matchLabels: {{app: helloworld}}}}
    match: [{{headers: [{{name: foo, exact: bar}}]}}]
    config: {{status: {status}, body: "{namespace}\\n"}}
"""
ROOT = """
plugins:
  - name: mesh-tag
    type: headers
    config: {request: {set: {x-mesh: root}}}
"""


class Mesh:
    """One asm-proxy, one Envoy per namespace (its certificate proves the namespace)."""

    def __init__(self, tmp_path: Path, transport: str) -> None:
        self.tmp = tmp_path
        self.transport = transport
        self.ca = CertificateAuthority(tmp_path / "ca")
        served = self.ca.issue("asm-proxy", dns=[SERVICE], client=False)
        self.port = free_port()
        self.dir = tmp_path / "namespaces"
        self.dir.mkdir()
        self.config = tmp_path / "asm-proxy.yaml"
        self.config.write_text(
            MAIN.format(port=self.port, cert=served.cert, key=served.key, ca=self.ca.cert_path)
        )
        self.upstream = Upstreams("app")
        self.replica: Replica | None = None
        self.envoys: dict[str, EnvoyProcess] = {}
        self._boot: dict[str, Any] | None = None

    def write(self, namespace: str, text: str) -> None:
        """Replace the file in one rename, as a ConfigMap update does."""
        path = self.dir / f"{namespace}.yaml"
        tmp = self.dir / f".{namespace}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)

    def start(self) -> None:
        self.replica = Replica(self.config, self.port, self.transport)

    def render(self) -> dict[str, Any]:
        """The Envoy bootstrap `render` derives from the config and its namespace files
        (rendered once: the union of every namespace's plugins decides what Envoy sends)."""
        if self._boot is None:
            self._boot = render_file(
                self.config,
                Options(
                    mode="central",
                    target="envoy",
                    bootstrap=True,
                    addresses=(f"127.0.0.1:{self.port}",),
                    client_tls=ClientTls("CERT", "KEY", str(self.ca.cert_path), SERVICE),
                    upstream=f"127.0.0.1:{self.upstream['app'].port}",
                    listen="127.0.0.1:0",
                    admin="127.0.0.1:0",
                ),
            )["envoy.yaml"]
        return copy.deepcopy(self._boot)

    def envoy(self, namespace: str) -> EnvoyProcess:
        issued = self.ca.issue(
            f"envoy-{namespace}", uris=[f"spiffe://cluster.local/ns/{namespace}/sa/hello"]
        )
        boot = self.render()
        text = (
            yaml.safe_dump(boot).replace("CERT", str(issued.cert)).replace("KEY", str(issued.key))
        )
        boot = yaml.safe_load(text)
        # Identical labels in both namespaces; the namespace comes from the certificate.
        boot["node"]["metadata"] = {"NAMESPACE": namespace, "LABELS": {"app": "helloworld"}}
        envoy = EnvoyProcess(boot, self.tmp, name=f"envoy-{namespace}")
        envoy.__enter__()
        self.envoys[namespace] = envoy
        return envoy

    def status(self, namespace: str, *, foo: str = "bar") -> int:
        reply = httpx.get(self.envoys[namespace].url + "/", headers={"foo": foo}, timeout=10)
        return reply.status_code

    def stop(self) -> None:
        for envoy in self.envoys.values():
            envoy.__exit__(None, None, None)
        if self.replica is not None:
            self.replica.stop()
        self.upstream.stop()

    def log(self) -> str:
        return "".join(self.replica.log) if self.replica else ""

    def wait_refused(self, namespace: str, count: int) -> None:
        """Until the log has said `count` times that the namespace's file was refused."""
        said = re.compile(rf"namespace file \S*/{namespace}\.yaml refused")
        wait_for(
            lambda: len(said.findall(self.log())) >= count,
            f"{namespace}.yaml refused {count} time(s)",
        )


@pytest.fixture
def mesh(tmp_path: Path, transport: str) -> Iterator[Mesh]:
    m = Mesh(tmp_path, transport)
    yield m
    m.stop()


def test_identical_labels_two_namespaces_never_crossed(mesh: Mesh) -> None:
    mesh.write("team-a", ANSWER.format(status=444, namespace="team-a"))
    mesh.write("team-b", ANSWER.format(status=555, namespace="team-b"))
    mesh.write("istio-system", ROOT)
    mesh.start()
    mesh.envoy("team-a")
    mesh.envoy("team-b")
    mesh.envoy("team-c")  # same labels, no file of its own
    for _ in range(10):  # both workers, several connections
        assert mesh.status("team-a") == 444
        assert mesh.status("team-b") == 555
        assert mesh.status("team-c") == 200
        assert mesh.status("team-a", foo="baz") == 200
    # The root namespace's plugins apply to every workload.
    assert {r.header("x-mesh") for r in mesh.upstream["app"].requests} == {"root"}

    # team-a's file reloaded: only team-a's answer changes.
    mesh.write("team-a", ANSWER.format(status=418, namespace="team-a"))
    wait_for(lambda: mesh.status("team-a") == 418)
    for _ in range(10):
        assert mesh.status("team-a") == 418
        assert mesh.status("team-b") == 555

    # team-b's file broken (an empty file, then bad YAML, then another namespace's
    # selector): refused, team-b keeps its last good plugins, team-a is untouched.
    for refusals, broken in enumerate(
        (
            "",
            "plugins: [",
            ANSWER.format(status=500, namespace="team-b").replace(
                "selector: {", "selector: {namespace: team-a, "
            ),
        ),
        start=1,
    ):
        mesh.write("team-b", broken)
        mesh.wait_refused("team-b", refusals)  # read and judged: not merely not seen yet
        for _ in range(5):
            assert mesh.status("team-b") == 555
            assert mesh.status("team-a") == 418
    assert "outside namespace 'team-b'" in mesh.log()
    assert "team-b.yaml" in mesh.log()

    # Removing a namespace's file removes its plugins, and only its.
    (mesh.dir / "team-b.yaml").unlink()
    wait_for(lambda: mesh.status("team-b") == 200)
    assert mesh.status("team-a") == 418


def test_a_namespace_whose_file_never_loaded_fails_closed(mesh: Mesh) -> None:
    mesh.write("team-a", ANSWER.format(status=444, namespace="team-a"))
    mesh.render()  # what Envoy is told does not depend on team-b's file
    mesh.write("team-b", "plugins:\n  - {name: x, type: no_such_type}\n")
    mesh.start()
    mesh.envoy("team-a")
    mesh.envoy("team-b")
    assert mesh.status("team-a") == 444
    reply = httpx.get(mesh.envoys["team-b"].url + "/", timeout=10)
    assert reply.status_code == 503
    assert "namespace team-b" in reply.text
    assert "no_such_type" in mesh.log()
    # Fixed: team-b serves with its own plugins.
    mesh.write("team-b", ANSWER.format(status=555, namespace="team-b"))
    wait_for(lambda: mesh.status("team-b") == 555)
    assert mesh.status("team-b", foo="baz") == 200
    assert mesh.status("team-a") == 444
