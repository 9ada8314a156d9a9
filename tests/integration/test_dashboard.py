"""deploy/grafana/asm-proxy.json queries only metrics a real asm-proxy exports: every
metric an expr names is in the /metrics of `asm-proxy serve` running every seed plugin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.serve import ROOT, ServeProcess

DASHBOARD = ROOT / "deploy" / "grafana" / "asm-proxy.json"
METRIC = re.compile(r"\b((?:asm_proxy|process)_[a-z0-9_]+)\b")
CONFIG = """
listen: unix:@SOCK@
workers: 2
plugins:
  - {name: auth, type: auth, config: {apiKeys: {keys: [{consumer: ci, sha256: "@HASH@"}]}}}
  - {name: nacos, type: nacos}
  - {name: nacos-grpc, type: nacos_grpc}
  - {name: eureka, type: eureka}
  - {name: consul, type: consul}
  - {name: rdns, type: reverse_dns, config: {podCIDRs: [10.0.0.0/8], static: {10.0.0.1: a.b}}}
  - {name: bodies, type: body_log}
""".replace("@HASH@", "0" * 64)


def exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    return found


def exported(text: str) -> set[str]:
    """Every name a query can use: samples, and families without samples yet (a counter's
    `_total`, a histogram's `_bucket`, `_count`, `_sum`)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
    return names


def test_every_query_names_an_exported_metric(tmp_path: Path) -> None:
    queries = exprs()
    assert len(queries) >= 20
    serve = ServeProcess(
        tmp_path, CONFIG.replace("@SOCK@", str(tmp_path / "asm.sock")), "--admin", "127.0.0.1:0"
    )
    try:
        serve.wait_message("serving on")
        response = httpx.get(serve.admin + "/metrics", timeout=30)
        assert response.status_code == 200
        names = exported(response.text)
    finally:
        serve.close()
    missing = {
        name: query for query in queries for name in METRIC.findall(query) if name not in names
    }
    assert not missing, f"queried but not exported: {missing}"
    assert {n for q in queries for n in METRIC.findall(q)} >= {
        "asm_proxy_hook_calls_total",
        "asm_proxy_plugin_auth_decisions_total",
        "asm_proxy_plugin_discovery_answers_total",
        "asm_proxy_plugin_reverse_dns_hosts_total",
        "asm_proxy_plugin_body_log_bodies_total",
    }


def test_the_check_finds_a_missing_metric() -> None:
    assert "asm_proxy_nonexistent_total" not in exported("# TYPE asm_proxy_x counter\n")
