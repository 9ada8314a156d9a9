"""`metadataNamespace` through the real Envoy: a plugin's dynamic metadata reaches Envoy under
the namespace the config names, with the Envoy config `asm-proxy render` derives from that
config (`metadata_options.receiving_namespaces`, docs/DEPLOYMENT.md), and nothing lands
under the default `asm-proxy`. Envoy shows what it holds by adding request headers from
%DYNAMIC_METADATA(NAMESPACE:KEY)%, which the echo upstream sees.

The namespace is applied above the transports (the stream builds the response), so one
transport (the default) is enough here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asm_proxy.envoy_process import EnvoyProcess
from tests.support.background import ServerThread, Upstreams
from tests.support.rendered import add_request_headers, http_filter, rendered_bootstrap

pytestmark = pytest.mark.envoy

NAMESPACE = "team.meta"
CONFIG = """
listen: unix:{socket}
workers: 1
reloadInterval: 0s
metadataNamespace: {namespace}
plugins:
  - name: meta
    type: 'tests.support.plugins:SetMetadata'
    config: {{values: {{tier: gold}}, fromHeader: x-tenant}}
"""


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    ups = Upstreams("app")
    yield ups
    ups.stop()


def test_plugin_metadata_arrives_under_the_configured_namespace(
    tmp_path: Path, upstream: Upstreams
) -> None:
    config = tmp_path / "asm-proxy.yaml"
    socket = tmp_path / "asm.sock"
    config.write_text(CONFIG.format(socket=socket, namespace=NAMESPACE))
    server = ServerThread(config, listen=f"unix:{socket}")
    try:
        boot = rendered_bootstrap(config, upstream["app"].port)
        ext_proc = http_filter(boot, "envoy.filters.http.ext_proc")
        assert ext_proc["metadata_options"]["receiving_namespaces"]["untyped"] == [NAMESPACE]
        add_request_headers(
            boot,
            {
                "x-md-tier": f"%DYNAMIC_METADATA({NAMESPACE}:tier)%",
                "x-md-tenant": f"%DYNAMIC_METADATA({NAMESPACE}:from_header)%",
                "x-md-default": "%DYNAMIC_METADATA(asm-proxy:tier)%",
            },
        )
        with EnvoyProcess(boot, tmp_path, name="envoy-metadata") as envoy:
            reply = httpx.get(envoy.url + "/", headers={"x-tenant": "blue"}, timeout=10)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    seen = upstream["app"].requests[-1]
    assert (seen.header("x-md-tier"), seen.header("x-md-tenant")) == ("gold", "blue")
    assert seen.header("x-md-default") is None  # nothing under the default namespace
