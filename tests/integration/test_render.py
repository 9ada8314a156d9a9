"""`asm-proxy render`: every mode x target loads in the real Envoy, the Istio objects carry
what Istio requires, and the rendered Envoy configs carry traffic through asm-proxy."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from asm_proxy.envoy_cluster import asm_proxy_cluster, grpc_service, layered_runtime
from asm_proxy.envoy_process import EnvoyProcess, validate_config
from asm_proxy.render import Options, RenderError, render_file
from asm_proxy.render.placement import MODE_LABEL, ClientTls
from tests.support.background import Upstreams
from tests.support.certs import CertificateAuthority
from tests.support.envoy_snippets import validate_snippets
from tests.support.workers import SupervisorThread

pytestmark = pytest.mark.envoy

CONFIG = """
listen: {listen}
workers: 2
reloadInterval: 0s
authzVia: {authz_via}
plugins:
  - name: keys
    type: auth
    phase: AUTHN
    selector: {{matchLabels: {{app: shop}}}}
    config: {{apiKeys: {{keys: [{{consumer: team-a, sha256: {digest}}}]}}}}
  - name: tag
    type: headers
    selector: {{matchLabels: {{app: shop}}}}
    config: {{request: {{set: {{x-tag: rendered}}}}, response: {{set: {{x-out: rendered}}}}}}
"""
#: printf %s secret | sha256sum
DIGEST = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
MODES = ["sidecar", "node", "central"]


def write_config(tmp_path: Path, listen: str, authz_via: str = "ext_proc") -> Path:
    path = tmp_path / "asm-proxy.yaml"
    path.write_text(CONFIG.format(listen=listen, authz_via=authz_via, digest=DIGEST))
    return path


@pytest.fixture(scope="module")
def client_tls(tmp_path_factory: pytest.TempPathFactory) -> ClientTls:
    ca = CertificateAuthority(tmp_path_factory.mktemp("ca"))
    envoy = ca.issue("envoy-client", dns=["envoy.test"], server=False)
    return ClientTls(cert=str(envoy.cert), key=str(envoy.key), ca=str(ca.cert_path))


def listen_for(mode: str, tmp_path: Path) -> str:
    return "127.0.0.1:18080" if mode == "central" else f"unix:{tmp_path}/ext_proc.sock"


@pytest.mark.parametrize("authz_via", ["ext_proc", "ext_authz"])
@pytest.mark.parametrize("mode", MODES)
def test_envoy_target_loads_in_envoy(
    mode: str, authz_via: str, tmp_path: Path, client_tls: ClientTls
) -> None:
    """The fragment (filters + cluster) and the complete bootstrap both load."""
    config = write_config(tmp_path, listen_for(mode, tmp_path), authz_via)
    fragment = render_file(
        config,
        Options(mode=mode, target="envoy", client_tls=client_tls),  # type: ignore[arg-type]
    )["envoy-fragment.yaml"]
    names = [f["name"] for f in fragment["http_filters"]]
    expected = ["envoy.filters.http.ext_proc"]
    if authz_via == "ext_authz":
        expected.insert(0, "envoy.filters.http.ext_authz")
    assert names == expected
    validate_snippets(filters=fragment["http_filters"], clusters=fragment["clusters"])
    (cluster,) = fragment["clusters"]
    proven = asm_proxy_cluster(["127.0.0.1:1"])
    for part in ("outlier_detection", "circuit_breakers", "typed_extension_protocol_options"):
        assert same_config(cluster[part], proven[part]), part
    assert same_config(cluster["health_checks"], proven["health_checks"])
    ext_proc = fragment["http_filters"][-1]["typed_config"]
    assert same_config(ext_proc["grpc_service"]["retry_policy"], grpc_service()["retry_policy"])
    boot = render_file(
        config,
        Options(mode=mode, target="envoy", client_tls=client_tls, bootstrap=True),  # type: ignore[arg-type]
    )
    validate_config(boot["envoy.yaml"])
    assert boot["envoy.yaml"]["layered_runtime"] == layered_runtime()


def same_config(rendered: Any, proven: Any) -> bool:
    """Equal as Envoy reads them: typed messages print durations as `0.500s` and 64-bit
    integers as strings, the reliability settings as written `0.5s` and ints."""
    if isinstance(rendered, dict) and isinstance(proven, dict):
        return rendered.keys() == proven.keys() and all(
            same_config(rendered[k], proven[k]) for k in proven
        )
    if isinstance(rendered, list) and isinstance(proven, list):
        return len(rendered) == len(proven) and all(map(same_config, rendered, proven))
    if isinstance(proven, str) and proven.endswith("s") and isinstance(rendered, str):
        try:
            return float(rendered[:-1]) == float(proven[:-1])
        except ValueError:
            return rendered == proven
    return bool(rendered == proven or str(rendered) == str(proven))


REQUIRED = {
    "EnvoyFilter": ("networking.istio.io/v1alpha3", ["configPatches"]),
    "DestinationRule": ("networking.istio.io/v1", ["host"]),
    "AuthorizationPolicy": ("security.istio.io/v1", ["action"]),
}
APPLY_TO = {"HTTP_FILTER", "CLUSTER", "LISTENER", "NETWORK_FILTER", "ROUTE_CONFIGURATION"}
OPERATIONS = {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"}


def check_istio_object(obj: dict[str, Any]) -> None:
    """The fields and values Istio's validation requires of these kinds."""
    version, spec_fields = REQUIRED[obj["kind"]]
    assert obj["apiVersion"] == version
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    spec = obj["spec"]
    for name in spec_fields:
        assert spec.get(name), f"{obj['kind']} needs spec.{name}"
    if obj["kind"] == "EnvoyFilter":
        for patch in spec["configPatches"]:
            assert patch["applyTo"] in APPLY_TO
            assert patch["match"]["context"] in ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY")
            assert patch["patch"]["operation"] in OPERATIONS
            assert patch["patch"]["value"]
        labels = spec.get("workloadSelector", {}).get("labels", {})
        assert all(isinstance(v, str) and v for v in labels.values())
    if obj["kind"] == "AuthorizationPolicy":
        assert spec["action"] == "CUSTOM" and spec["provider"]["name"]


@pytest.mark.parametrize("authz_via", ["ext_proc", "ext_authz"])
@pytest.mark.parametrize("mode", MODES)
def test_istio_target(mode: str, authz_via: str, tmp_path: Path) -> None:
    """Istio objects have what Istio requires; the Envoy config inside them loads in Envoy."""
    config = write_config(tmp_path, listen_for(mode, tmp_path), authz_via)
    objects = render_file(
        config,
        Options(mode=mode, target="istio", context="SIDECAR_INBOUND"),  # type: ignore[arg-type]
    )
    for name, obj in objects.items():
        if name != "mesh-config.yaml":
            check_istio_object(obj)
    envoy_filter = objects["envoyfilter.yaml"]
    patches = envoy_filter["spec"]["configPatches"]
    filters = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    clusters = [p["patch"]["value"] for p in patches if p["applyTo"] == "CLUSTER"]
    validate_snippets(filters=filters, clusters=clusters)
    labels = envoy_filter["spec"].get("workloadSelector", {}).get("labels", {})
    assert labels.get("app") == "shop"  # the plugins' common selector
    runtime = objects["mesh-config.yaml"]["meshConfig"]["defaultConfig"]["runtimeValues"]
    assert runtime == {k: "true" for k in layered_runtime()["layers"][0]["static_layer"]}
    if mode == "central":
        assert not clusters  # Istio's own outbound cluster, mTLS from the DestinationRule
        assert filters[-1]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            "outbound|18080||asm-proxy.asm-proxy.svc.cluster.local"
        )
        assert objects["destinationrule.yaml"]["spec"]["trafficPolicy"]["tls"] == {
            "mode": "ISTIO_MUTUAL"
        }
        if authz_via == "ext_authz":  # Istio's ext_authz, from the extension provider
            assert [f["name"] for f in filters] == ["envoy.filters.http.ext_proc"]
            provider = objects["mesh-config.yaml"]["meshConfig"]["extensionProviders"][0]
            assert (
                provider["envoyExtAuthzGrpc"]["service"] == "asm-proxy.asm-proxy.svc.cluster.local"
            )
            assert objects["authorizationpolicy.yaml"]["spec"]["provider"]["name"] == "asm-proxy"
    else:
        assert labels[MODE_LABEL] == mode  # only workloads that can reach the socket
        (cluster,) = clusters
        paths = [
            e["endpoint"]["address"]["pipe"]["path"]
            for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        ]
        assert paths == [f"{tmp_path}/ext_proc.sock.0", f"{tmp_path}/ext_proc.sock.1"]


def test_the_cli_writes_and_prints(tmp_path: Path) -> None:
    config = write_config(tmp_path, listen_for("sidecar", tmp_path))
    out = tmp_path / "out"
    cli = [
        sys.executable,
        "-m",
        "asm_proxy",
        "render",
        "--mode",
        "sidecar",
        "--config",
        str(config),
    ]
    done = subprocess.run(
        [*cli, "--target", "istio", "--out", str(out)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [str(out / "envoyfilter.yaml"), str(out / "mesh-config.yaml")]
    assert yaml.safe_load((out / "envoyfilter.yaml").read_text())["kind"] == "EnvoyFilter"
    printed = subprocess.run(
        [*cli, "--target", "envoy"], capture_output=True, text=True, check=True
    ).stdout
    assert printed.startswith("# envoy-fragment.yaml\n")
    assert yaml.safe_load(printed)["clusters"][0]["name"] == "asm_proxy"
    bad = subprocess.run(
        [*cli, "--target", "envoy", "--workers", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    ups = Upstreams("app")
    yield ups
    ups.stop()


@pytest.mark.parametrize("mode", ["sidecar", "node"])
def test_rendered_envoy_carries_traffic(mode: str, tmp_path: Path, upstream: Upstreams) -> None:
    """The rendered bootstrap, run: requests pass asm-proxy's two workers (via their
    sockets), the auth plugin answers 401 without a key, the upstream sees the header and
    the client the response header; the Envoy side holds the asm-proxy cluster healthy."""
    config = write_config(tmp_path, listen_for(mode, tmp_path))
    supervisor = SupervisorThread(config, listen=listen_for(mode, tmp_path), workers=2)
    try:
        boot = render_file(
            config,
            Options(
                mode=mode,  # type: ignore[arg-type]
                target="envoy",
                bootstrap=True,
                upstream=f"127.0.0.1:{upstream['app'].port}",
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
            ),
        )["envoy.yaml"]
        # The workload's identity, as Istio puts it on every sidecar: the tag plugin
        # selects app=shop, and Envoy sends these labels as the rendered attributes.
        boot["node"]["metadata"] = {"NAMESPACE": "shop", "LABELS": {"app": "shop"}}
        with EnvoyProcess(boot, tmp_path, name=f"envoy-{mode}") as envoy:
            with httpx.Client(base_url=envoy.url, timeout=10) as client:
                assert client.get("/").status_code == 401
                for _ in range(8):
                    reply = client.get("/", headers={"x-api-key": "secret"})
                    assert reply.status_code == 200
                    assert reply.headers["x-out"] == "rendered"
                    assert upstream["app"].requests[-1].header("x-tag") == "rendered"
            healthy = envoy.stats("cluster.asm_proxy.health_check.success")
            assert sum(healthy.values()) >= 1
        for i in range(2):  # Envoy may connect: the socket's mode is socketMode (0660)
            assert stat.S_IMODE(os.stat(f"{tmp_path}/ext_proc.sock.{i}").st_mode) == 0o660
        by_worker = supervisor.streams_by_worker()
        assert all(count > 0 for count in by_worker.values()), by_worker
    finally:
        supervisor.stop()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAMESPACE_FILES = DEPLOY / "components" / "namespaces" / "namespaces"


@pytest.mark.parametrize("overlay", ["node", "central", "central-mtls"])
def test_deploy_configs_render_with_their_namespace_files(
    overlay: str, tmp_path: Path, client_tls: ClientTls
) -> None:
    """The shared modes' configs as deploy/ ships them, with the namespace files beside
    (`--namespace-dir`, as docs/DEPLOYMENT.md shows): what Envoy is told covers every
    namespace's plugins, and the real Envoy loads it."""
    config = DEPLOY / "overlays" / overlay / "config.yaml"
    if overlay == "central-mtls":  # its certificate files, as the pod would have them
        ca = CertificateAuthority(tmp_path / "ca")
        served = ca.issue("serving", dns=["asm-proxy.asm-proxy.svc"], client=False)
        text = config.read_text()
        for name, path in (("tls.crt", served.cert), ("tls.key", served.key)):
            text = text.replace(f"/etc/asm-proxy/tls/{name}", str(path))
        config = tmp_path / "config.yaml"
        config.write_text(text.replace("/etc/asm-proxy/tls/ca.crt", str(ca.cert_path)))
    mode = "central" if overlay.startswith("central") else overlay
    boot = render_file(
        config,
        Options(mode=mode, target="envoy", client_tls=client_tls, bootstrap=True),  # type: ignore[arg-type]
        NAMESPACE_FILES,
    )["envoy.yaml"]
    validate_config(boot)
    istio = render_file(config, Options(mode=mode, target="istio"), NAMESPACE_FILES)  # type: ignore[arg-type]
    envoy_filter = istio["envoyfilter.yaml"]
    check_istio_object(envoy_filter)
    # One asm-proxy for every namespace: the EnvoyFilter sits in the root namespace.
    assert envoy_filter["metadata"]["namespace"] == "istio-system"
    filters = [
        p["patch"]["value"]
        for p in envoy_filter["spec"]["configPatches"]
        if p["applyTo"] == "HTTP_FILTER"
    ]
    assert [f["name"] for f in filters] == ["envoy.filters.http.ext_proc"]


def test_node_mode_over_tcp_needs_tls_and_renders_it(tmp_path: Path, client_tls: ClientTls) -> None:
    """A node config listening on TCP: refused without `tls:` (nothing else would prove the
    caller); with it, Envoy reaches the node-local Service with mTLS (EnvoyFilter's own
    cluster, selected by the node label), and the real Envoy loads it."""
    config = write_config(tmp_path, "0.0.0.0:18080")
    with pytest.raises(RenderError, match="needs `tls:`"):
        render_file(config, Options(mode="node", target="envoy"))
    ca = CertificateAuthority(tmp_path / "ca")
    served = ca.issue("serving", dns=["asm-proxy.asm-proxy.svc"], client=False)
    text = config.read_text().replace(
        "plugins:",
        f"tls: {{certFile: {served.cert}, keyFile: {served.key}, clientCaFile: {ca.cert_path}}}"
        "\nplugins:",
    )
    config.write_text(text)
    objects = render_file(config, Options(mode="node", target="istio", client_tls=client_tls))
    envoy_filter = objects["envoyfilter.yaml"]
    check_istio_object(envoy_filter)
    patches = envoy_filter["spec"]["configPatches"]
    (cluster,) = [p["patch"]["value"] for p in patches if p["applyTo"] == "CLUSTER"]
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] == "asm-proxy.asm-proxy.svc.cluster.local"
    assert envoy_filter["spec"]["workloadSelector"]["labels"][MODE_LABEL] == "node"
    filters = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    validate_snippets(filters=filters, clusters=[cluster])
