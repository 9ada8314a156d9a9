"""Every Envoy config the project renders or documents is loaded by the real Envoy
(`envoy --mode validate`: every field, extension and reference checked as at start), and the
documented asm_proxy cluster, grpc_service and runtime are exactly what the code renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asm_proxy.envoy_bootstrap import (
    EXT_PROC_FILTER,
    ExtAuthz,
    ExtProc,
    Route,
    Setup,
    bootstrap,
)
from asm_proxy.envoy_cluster import asm_proxy_cluster, grpc_service, layered_runtime
from asm_proxy.envoy_process import validate_config

pytestmark = pytest.mark.envoy

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "PLUGINS.md", *sorted((ROOT / "docs" / "plugins").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (?P<mark>[\w: -]+) -->\n)?```yaml\n(?P<text>.*?)```", re.S)

RENDERED = {
    "unix workers, ext_proc": Setup(
        asm_proxy=["unix:/run/asm-proxy/x.sock.0", "unix:/run/asm-proxy/x.sock.1"],
        clusters={"upstream": 8080},
        routes=[Route("upstream")],
    ),
    "tcp, ext_authz and ext_proc, access log": Setup(
        asm_proxy="127.0.0.1:18080",
        clusters={"upstream": 8080, "other": 8081},
        routes=[Route("upstream"), Route("other", domains=["other"])],
        ext_authz=ExtAuthz(context_extensions={"workload.namespace": "shop"}),
        access_log="/dev/null",
        access_log_keys=("user",),
    ),
    "ext_authz only, no protection": Setup(
        asm_proxy="127.0.0.1:18080",
        clusters={"upstream": 8080},
        routes=[Route("upstream")],
        ext_proc=None,
        ext_authz=ExtAuthz(retries=False),
        asm_proxy_health_checks=False,
        asm_proxy_outlier_detection=False,
        runtime_flags=False,
    ),
    "observability mode, bodies": Setup(
        asm_proxy="127.0.0.1:18080",
        clusters={"upstream": 8080},
        routes=[Route("upstream")],
        ext_proc=ExtProc(
            observability_mode=True,
            request_body_mode="STREAMED",
            response_body_mode="BUFFERED",
            request_attributes=["xds.node.metadata.NAMESPACE"],
        ),
        asm_proxy_max_streams=8,
    ),
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendered_bootstrap_loads(name: str, tmp_path: Path) -> None:
    config = bootstrap(RENDERED[name])
    validate_config(config)


def documented() -> list[tuple[str, str | None, Any]]:
    """(where, marker, parsed) for every YAML block of the docs that configures Envoy."""
    found = []
    for doc in DOCS:
        for n, match in enumerate(BLOCK.finditer(doc.read_text())):
            parsed = yaml.safe_load(match.group("text"))
            if kind(parsed) is not None:
                found.append((f"{doc.relative_to(ROOT)}#{n}", match.group("mark"), parsed))
    return found


def kind(doc: Any) -> str | None:
    items = doc if isinstance(doc, list) else [doc]
    if not all(isinstance(i, dict) for i in items) or not items:
        return None
    if isinstance(doc, dict) and "layered_runtime" in doc:
        return "runtime"
    if isinstance(doc, dict) and "load_assignment" in doc:
        return "cluster"
    names = [str(i.get("name", "")) for i in items]
    if all(n.startswith("envoy.access_loggers.") for n in names):
        return "access_log"
    if all(n.startswith("envoy.filters.http.") for n in names):
        return "filters"
    return None


def embed(doc: Any) -> dict[str, Any]:
    """A rendered bootstrap with the documented piece in its place."""
    config = bootstrap(
        Setup(
            asm_proxy="127.0.0.1:18080",
            clusters={"upstream": 8080},
            routes=[Route("upstream")],
            access_log="/dev/null",
        )
    )
    resources = config["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    what = kind(doc)
    if what == "runtime":
        config["layered_runtime"] = doc["layered_runtime"]
    elif what == "cluster":
        resources["clusters"] = [doc, *resources["clusters"][1:]]
    elif what == "access_log":
        hcm["access_log"] = doc if isinstance(doc, list) else [doc]
    else:
        filters = doc if isinstance(doc, list) else [doc]
        if filters[-1]["name"] != "envoy.filters.http.router":
            filters = [*filters, hcm["http_filters"][-1]]
        hcm["http_filters"] = filters
    return config


DOCUMENTED = documented()


def test_the_docs_show_the_envoy_side() -> None:
    marks = {mark for _, mark, _ in DOCUMENTED}
    assert {"envoy: filter", "envoy: cluster", "envoy: runtime"} <= marks
    assert sum(1 for _, _, doc in DOCUMENTED if kind(doc) == "cluster") >= 2


@pytest.mark.parametrize(
    ("where", "doc"), [(w, d) for w, _, d in DOCUMENTED], ids=[w for w, _, _ in DOCUMENTED]
)
def test_documented_envoy_config_loads(where: str, doc: Any, tmp_path: Path) -> None:
    validate_config(embed(doc))


def test_documented_asm_proxy_pieces_are_the_rendered_ones() -> None:
    """The clusters the docs show are asm_proxy_cluster() for their endpoints; PLUGINS.md's
    filter calls asm-proxy with grpc_service(); its runtime is layered_runtime()."""
    for where, mark, doc in DOCUMENTED:
        if kind(doc) == "cluster" and doc["name"] == "asm_proxy":
            targets = []
            for endpoint in doc["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]
                if "pipe" in address:
                    targets.append("unix:" + address["pipe"]["path"])
                else:
                    socket = address["socket_address"]
                    targets.append(f"{socket['address']}:{socket['port_value']}")
            assert doc == asm_proxy_cluster(targets), where
        if mark == "envoy: filter":
            (ext_proc,) = [f for f in doc if f["name"] == EXT_PROC_FILTER]
            assert ext_proc["typed_config"]["grpc_service"] == grpc_service(), where
        if mark == "envoy: runtime":
            assert doc["layered_runtime"] == layered_runtime(), where
