"""The `eureka` and `consul` built-ins through the shared test host, and their rewriters."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from asm_proxy.testing import PluginHost, mode_of
from asm_proxy_handlers.consul import ConsulPlugin
from asm_proxy_handlers.eureka import EurekaPlugin, rewrite_json, rewrite_xml
from tests.support.consul import Registration
from tests.support.eureka import applications_json, applications_xml, instance

HOST = "provider.shop.svc.cluster.local"


def fetch(host: PluginHost, path: str, body: bytes, content_type: str) -> bytes:
    host.request_headers({":path": path, "accept-encoding": "gzip"})
    host.response_headers({"content-type": content_type, "content-length": str(len(body))})
    (step,) = host.response_body(body)
    return body if step.body is None else step.body


class TestEureka:
    config = {"defaultNamespace": "shop", "ports": {"provider": 80}}

    def test_xml_is_edited_in_place(self) -> None:
        """Only the host fields, URLs and port change; every other byte stays."""
        apps = {"PROVIDER": [instance("provider", "10.244.1.7", 8080)]}
        body = applications_xml(apps)
        host = PluginHost(EurekaPlugin, self.config)
        out = fetch(host, "/eureka/apps/", body, "application/xml")
        expected = body.replace(b"<hostName>10.244.1.7<", f"<hostName>{HOST}<".encode())
        expected = expected.replace(b"<ipAddr>10.244.1.7<", f"<ipAddr>{HOST}<".encode())
        expected = expected.replace(b"http://10.244.1.7:8080/", f"http://{HOST}:80/".encode())
        expected = expected.replace(b'enabled="true">8080<', b'enabled="true">80<')
        assert out == expected
        assert b"east &amp; west" in out

    def test_json_application(self) -> None:
        host = PluginHost(EurekaPlugin, {"services": {"PROVIDER": "legacy.example.org"}})
        one = orjson.dumps(
            {
                "application": {
                    "name": "PROVIDER",
                    "instance": [instance("provider", "10.0.0.1", 8080)],
                }
            }
        )
        doc = orjson.loads(fetch(host, "/eureka/apps/PROVIDER", one, "application/json"))
        got = doc["application"]["instance"][0]
        assert (got["hostName"], got["ipAddr"], got["port"]["$"]) == ("legacy.example.org",) * 2 + (
            8080,
        )

    def test_other_requests_skip_the_response(self) -> None:
        host = PluginHost(EurekaPlugin, self.config)
        assert (
            mode_of(host.request_headers({":path": "/eureka/apps/PROVIDER/i-1", ":method": "PUT"}))[
                "response_header_mode"
            ]
            == "SKIP"
        )

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"<applications><application>", "not_xml"),
            (b"<applications/>", "no_instances"),
            (b"{nope", "not_json"),
        ],
    )
    def test_bad_answers_pass(self, body: bytes, reason: str) -> None:
        host = PluginHost(EurekaPlugin, self.config)
        kind = "application/json" if body.startswith(b"{") else "application/xml"
        assert fetch(host, "/eureka/apps/", body, kind) == body
        assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome=reason) == 1

    @given(
        st.lists(st.sampled_from(["provider", "billing", "x-y"]), min_size=1, max_size=4),
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
    )
    def test_xml_and_json_agree(self, apps: list[str], meta: str) -> None:
        """The same registry as XML and as JSON is rewritten to the same instances."""
        registry = {
            a.upper(): [
                instance(a, f"10.0.0.{i}", 8000 + i, metadata={"m": meta}) for i in range(2)
            ]
            for a in apps
        }
        plugin = EurekaPlugin(EurekaPlugin.Config.model_validate(self.config))
        xml = rewrite_xml(applications_xml(registry), plugin.resolve)
        assert xml.body is not None and xml.instances == 2 * len(registry)
        from_xml = [
            (
                i.findtext("app"),
                i.findtext("hostName"),
                i.findtext("ipAddr"),
                i.findtext("homePageUrl"),
                i.findtext("metadata/m"),
            )
            for i in ET.fromstring(xml.body).iter("instance")
        ]
        json = rewrite_json(applications_json(registry), plugin.resolve)
        assert json.body is not None
        from_json = [
            (i["app"], i["hostName"], i["ipAddr"], i["homePageUrl"], i["metadata"]["m"])
            for a in orjson.loads(json.body)["applications"]["application"]
            for i in a["instance"]
        ]
        assert from_xml == from_json
        for app, host_name, _, url, m in from_xml:
            assert host_name == f"{app.lower()}.shop.svc.cluster.local" and m == meta
            assert url.startswith(f"http://{host_name}:")

    def test_config_is_checked(self) -> None:
        with pytest.raises(ValidationError, match="template field"):
            EurekaPlugin.Config.model_validate({"hostTemplate": "{service}.{group}"})


class TestConsul:
    config = {"defaultNamespace": "shop", "ports": {"provider": 80}}

    def answer(self, shape: str) -> bytes:
        regs = [
            Registration("a", "10.0.0.1", "10.244.1.7", 8080),
            Registration("b", "10.0.0.2", "", 8080),
        ]
        return orjson.dumps([getattr(r, shape)("provider", "dc1") for r in regs])

    def test_health(self) -> None:
        host = PluginHost(ConsulPlugin, self.config)
        out = orjson.loads(
            fetch(
                host,
                "/v1/health/service/provider?index=3&wait=5s",
                self.answer("health"),
                "application/json",
            )
        )
        assert [
            (e["Service"]["Address"], e["Node"]["Address"], e["Service"]["Port"]) for e in out
        ] == [
            (HOST, "10.0.0.1", 80),
            ("", HOST, 80),
        ]

    def test_catalog_with_datacenter_template(self) -> None:
        host = PluginHost(ConsulPlugin, {"hostTemplate": "{service}.{datacenter}.consul"})
        out: list[dict[str, Any]] = orjson.loads(
            fetch(
                host,
                "/v1/catalog/service/provider?dc=eu",
                self.answer("catalog"),
                "application/json",
            )
        )
        assert [(e["ServiceAddress"], e["Address"]) for e in out] == [
            ("provider.eu.consul", "10.0.0.1"),
            ("", "provider.eu.consul"),
        ]

    def test_namespaces(self) -> None:
        host = PluginHost(ConsulPlugin, {"namespaces": {"team-a": "shop"}})
        out = orjson.loads(
            fetch(
                host,
                "/v1/health/service/provider?ns=team-a",
                self.answer("health"),
                "application/json",
            )
        )
        assert out[0]["Service"]["Address"] == HOST

    def test_other_paths_and_bad_answers(self) -> None:
        host = PluginHost(ConsulPlugin, self.config)
        assert (
            mode_of(host.request_headers({":path": "/v1/kv/config"}))["response_header_mode"]
            == "SKIP"
        )
        host.new_exchange()
        assert fetch(host, "/v1/health/service/provider", b"{}", "application/json") == b"{}"
        assert (
            host.metric("asm_proxy_plugin_discovery_answers_total", outcome="unexpected_shape") == 1
        )
