"""`asm-proxy diagnose`: every check is triggered by the mistake it names, and a config
rendered by `asm-proxy render` has none of them."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from asm_proxy.api import Event, Http, Plugin
from asm_proxy.diagnose import Severity, diagnose, envoy_side, worst
from asm_proxy.diagnose.checks import Finding, run
from asm_proxy.loader import load_text
from asm_proxy.render import Options, render

GOOD = """
listen: unix:/tmp/asm.sock
workers: 1
plugins:
  - {name: tag, type: headers, config: {request: {set: {x-a: '1'}}}}
"""


class Whole(Plugin):
    """Wants request bodies of up to 8 MiB whole."""

    body_bytes = 8 * 1024 * 1024

    def on_request_body(self, http: Http) -> None: ...


def checks_of(text: str, envoy: dict[str, Any] | None = None) -> list[Finding]:
    return run(load_text("diag.yaml", text), envoy_side(envoy) if envoy is not None else None)


def rendered(text: str) -> dict[str, Any]:
    """The Envoy config asm-proxy render makes for `text` (sidecar, plain Envoy)."""
    objects = render(load_text("diag.yaml", text), Options(mode="sidecar", target="envoy"))
    return objects["envoy-fragment.yaml"]


def names(findings: list[Finding]) -> list[str]:
    return [f.check for f in findings]


def ext_proc(envoy: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = envoy["http_filters"][-1]["typed_config"]
    return typed


def test_a_rendered_config_has_no_findings() -> None:
    findings = checks_of(GOOD, rendered(GOOD))
    assert findings == []
    assert worst(findings) == 0


def test_equal_priority() -> None:
    text = GOOD + "  - {name: other, type: headers, config: {request: {set: {x-b: '1'}}}}\n"
    (finding,) = checks_of(text)
    assert (finding.check, finding.severity, finding.plugin) == (
        "equal-priority",
        Severity.WARNING,
        "other",
    )


def test_fail_open_access() -> None:
    text = GOOD + (
        "  - {name: keys, type: auth, phase: AUTHN, failStrategy: FAIL_OPEN, priority: 1,"
        " config: {apiKeys: {keys: [{consumer: a, sha256: " + "a" * 64 + "}]}}}\n"
    )
    assert names(checks_of(text)) == ["fail-open-access"]


def test_timeout_over_deadline() -> None:
    text = GOOD.replace("{name: tag,", "{name: tag, timeout: 1s,")
    assert names(checks_of(text)) == ["timeout-over-deadline"]


def test_unsatisfiable_selector() -> None:
    text = GOOD.replace("{name: tag,", "{name: tag, selector: {namespace: Shop_Prod},")
    (finding,) = checks_of(text)
    assert finding.check == "selector-matches-nothing" and finding.severity is Severity.ERROR
    assert "namespace 'Shop_Prod'" in finding.message


def test_no_filter() -> None:
    assert names(checks_of(GOOD, {"clusters": []})) == ["no-filter"]


def test_timeout_over_message_timeout() -> None:
    envoy = rendered(GOOD)
    ext_proc(envoy)["message_timeout"] = "0.1s"
    assert names(checks_of(GOOD, envoy)) == ["timeout-over-message-timeout"]


def test_missing_phases() -> None:
    text = GOOD.replace("request: {set: {x-a: '1'}}", "response: {set: {x-a: '1'}}")
    envoy = rendered(GOOD)  # made for a request-only chain: response headers SKIP
    del ext_proc(envoy)["allow_mode_override"]
    findings = checks_of(text, envoy)
    assert names(findings) == ["missing-phase"]
    assert "response_header_mode: SKIP" in findings[0].message


def test_metadata_not_received() -> None:
    envoy = rendered(GOOD)
    ext_proc(envoy)["metadata_options"]["receiving_namespaces"]["untyped"] = ["other"]
    assert names(checks_of(GOOD, envoy)) == ["metadata-not-received"]


def test_routing_not_allowed() -> None:
    text = GOOD.replace("x-a: '1'", "':authority': b.svc")
    envoy = rendered(GOOD)  # made for a chain that does not reroute
    assert names(checks_of(text, envoy)) == ["routing-not-allowed"]


def test_identity_not_sent() -> None:
    text = GOOD.replace("{name: tag,", "{name: tag, selector: {matchLabels: {app: cart}},")
    envoy = rendered(GOOD)  # no selector there: no identity attributes
    finding = next(f for f in checks_of(text, envoy) if f.check == "identity-not-sent")
    assert "xds.node.metadata.LABELS['app']" in finding.message


def test_selector_misses_this_workload() -> None:
    text = GOOD.replace("{name: tag,", "{name: tag, selector: {namespace: shop},")
    envoy = rendered(text)
    envoy["node"] = {"metadata": {"NAMESPACE": "billing"}}
    assert names(checks_of(text, envoy)) == ["selector-matches-nothing"]


def test_buffer_limit() -> None:
    text = GOOD + "  - {name: whole, type: 'tests.unit.test_diagnose:Whole', priority: 1}\n"
    envoy = rendered(text)
    envoy["listeners"] = [{"filter_chains": [], "per_connection_buffer_limit_bytes": 65536}]
    (finding,) = checks_of(text, envoy)
    assert finding.check == "buffer-limit" and "65536" in finding.message


def test_no_health_checks() -> None:
    envoy = rendered(GOOD)
    del envoy["clusters"][0]["health_checks"]
    assert names(checks_of(GOOD, envoy)) == ["no-health-checks"]


def test_failure_mode_allow() -> None:
    envoy = rendered(GOOD)
    ext_proc(envoy)["failure_mode_allow"] = True
    assert names(checks_of(GOOD, envoy)) == ["failure-mode-allow"]


def test_every_check_has_a_test() -> None:
    """Each check name above is asserted by a test of this module."""
    from asm_proxy.diagnose import checks

    source = Path(__file__).read_text()
    for check in (*checks.CONFIG_CHECKS, *checks.ENVOY_CHECKS):
        assert f"def test_{check.__name__}(" in source, check


def test_the_cli_exit_code_is_the_worst_severity(tmp_path: Path) -> None:
    config = tmp_path / "asm-proxy.yaml"
    config.write_text(GOOD)
    envoy = rendered(GOOD)
    good = tmp_path / "envoy.yaml"
    good.write_text(yaml.safe_dump(envoy))
    bad_doc = copy.deepcopy(envoy)
    ext_proc(bad_doc)["message_timeout"] = "0.05s"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_doc))
    cli = [sys.executable, "-m", "asm_proxy", "diagnose", "--config", str(config)]
    ok = subprocess.run([*cli, "--envoy-config", str(good)], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "no problems found\n")
    failed = subprocess.run(
        [*cli, "--envoy-config", str(bad), "--format", "json"], capture_output=True, text=True
    )
    assert failed.returncode == 2
    (finding,) = orjson.loads(failed.stdout)
    assert finding["check"] == "timeout-over-message-timeout"
    assert finding["severity"] == "error"


@pytest.mark.parametrize("severity", list(Severity))
def test_worst(severity: Severity) -> None:
    assert worst([Finding("x", severity, "m")]) == int(severity)


def test_diagnose_reads_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    assert diagnose(path) == []
    assert Event.REQUEST_HEADERS in load_text("x", GOOD).chain.entries[0].plugin.hooks
