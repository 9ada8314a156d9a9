"""`asm-proxy diagnose --envoy-admin`: a running Envoy's /config_dump checked against the
config, through the real Envoy."""

from __future__ import annotations

from pathlib import Path

import pytest

from asm_proxy.diagnose import diagnose, read_envoy_admin
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.render import Options, render_file

pytestmark = pytest.mark.envoy

CONFIG = """
listen: unix:{dir}/asm.sock
workers: 1
plugins:
  - {{name: cart-only, type: headers, selector: {{namespace: shop}},
     config: {{request: {{set: {{x-a: '1'}}}}}}}}
"""


def test_a_rendered_envoy_passes_and_a_changed_one_does_not(tmp_path: Path) -> None:
    config = tmp_path / "asm-proxy.yaml"
    config.write_text(CONFIG.format(dir=tmp_path))
    boot = render_file(
        config,
        Options(
            mode="sidecar",
            target="envoy",
            bootstrap=True,
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
        ),
    )["envoy.yaml"]
    boot["node"]["metadata"] = {"NAMESPACE": "shop"}
    with EnvoyProcess(boot, tmp_path, name="rendered") as envoy:
        envoy_side = read_envoy_admin(f"http://{envoy.admin}")
        assert envoy_side.node_metadata == {"NAMESPACE": "shop"}
        assert diagnose(config, envoy_side) == []
    # The same Envoy, hand-edited: too short a message timeout, and another namespace.
    ext_proc = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["http_filters"][0]["typed_config"]
    ext_proc["message_timeout"] = "0.1s"
    boot["node"]["metadata"] = {"NAMESPACE": "billing"}
    with EnvoyProcess(boot, tmp_path, name="edited") as envoy:
        findings = diagnose(config, read_envoy_admin(f"http://{envoy.admin}"))
    assert sorted(f.check for f in findings) == [
        "selector-matches-nothing",
        "timeout-over-message-timeout",
    ]
