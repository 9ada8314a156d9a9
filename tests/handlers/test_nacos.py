"""The `nacos` built-in through the shared test host, and its rewriter on its own."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from asm_proxy.testing import BodySendMode, PluginHost, mode_of
from asm_proxy_handlers.nacos import NacosPlugin, rewrite_instances
from tests.support.nacos import Instance, v1_answer, v2_answer

V1_PATH = "/nacos/v1/ns/instance/list"
V2_PATH = "/nacos/v2/ns/instance/list"

INSTANCES = [
    Instance("10.0.0.11", 8080, metadata={"version": "v1", "zone": "上海-a"}),
    Instance("10.0.0.12", 8080, weight=2.5, metadata={"version": "v2", "préféré": "oui"}),
    Instance("10.0.0.13", 8081, healthy=False, cluster="BACKUP", metadata={}),
]
JSON_HEADERS = {"content-type": "application/json;charset=UTF-8"}


def exchange(
    host: PluginHost,
    path: str,
    answer: bytes,
    *,
    request_headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
) -> tuple[bytes, Any]:
    """One query through the host: the body the client gets and the last step."""
    host.request_headers({":path": path, **(request_headers or {})})
    headers = {**JSON_HEADERS, "content-length": str(len(answer)), **(response_headers or {})}
    host.response_headers(headers)
    steps = host.response_body(answer)
    assert len(steps) == 1
    step = steps[0]
    return (step.body if step.body is not None else answer), step


def hosts_of(body: bytes) -> list[dict[str, Any]]:
    doc = orjson.loads(body)
    data = doc.get("data", doc)
    return data["hosts"]  # type: ignore[no-any-return]


class TestRewrite:
    def test_v1_answer(self) -> None:
        """A v1 answer: every ip becomes the service host; every other field keeps its value."""
        host = PluginHost(NacosPlugin, {})
        answer = v1_answer("DEFAULT_GROUP", "provider", INSTANCES)
        body, step = exchange(host, V1_PATH + "?serviceName=DEFAULT_GROUP%40%40provider", answer)
        before, after = orjson.loads(answer), orjson.loads(body)
        assert [h["ip"] for h in after["hosts"]] == ["provider.default.svc.cluster.local"] * 3
        for old, new in zip(before["hosts"], after["hosts"], strict=True):
            assert {**old, "ip": new["ip"]} == new
        assert {k: v for k, v in before.items() if k != "hosts"} == {
            k: v for k, v in after.items() if k != "hosts"
        }
        assert after["hosts"][0]["metadata"]["zone"] == "上海-a"
        assert step.headers["content-length"] == str(len(body))
        assert step.metadata["asm-proxy"]["nacos"]["instances"] == 3

    def test_v2_answer(self) -> None:
        """A v2 answer ({code, message, data}): the wrapper stays, the instances are rewritten."""
        host = PluginHost(NacosPlugin, {})
        answer = v2_answer("DEFAULT_GROUP", "provider", INSTANCES)
        body, _ = exchange(host, V2_PATH + "?serviceName=provider&namespaceId=public", answer)
        doc = orjson.loads(body)
        assert (doc["code"], doc["message"]) == (0, "success")
        assert {h["ip"] for h in doc["data"]["hosts"]} == {"provider.default.svc.cluster.local"}
        assert [h["port"] for h in doc["data"]["hosts"]] == [8080, 8080, 8081]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("serviceName=DEFAULT_GROUP%40%40provider", "provider.g-default_group"),
            ("serviceName=DEFAULT_GROUP@@provider", "provider.g-default_group"),
            ("serviceName=provider&groupName=blue", "provider.g-blue"),
            ("serviceName=blue%40%40provider&groupName=ignored", "provider.g-blue"),
            ("serviceName=provider", "provider.g-default_group"),
            ("serviceName=provider&namespaceId=dev&groupName=", "provider.g-default_group"),
        ],
    )
    def test_service_and_group_forms(self, query: str, expected: str) -> None:
        """GROUP@@name and a separate groupName, URL-encoded or not, name the same service."""
        host = PluginHost(NacosPlugin, {"hostTemplate": "{service}.g-{group}"})
        body, _ = exchange(host, f"{V1_PATH}?{query}", v1_answer("G", "provider", INSTANCES))
        assert {h["ip"] for h in hosts_of(body)} == {expected}

    def test_namespace_fields(self) -> None:
        """{namespace} comes from the namespace map, else the namespaceId, with the public
        namespace as defaultNamespace; {namespaceId} is the raw id."""
        config = {
            "hostTemplate": "{service}.{namespace}.{namespaceId}",
            "namespaces": {"0b9f-uuid": "shop"},
            "defaultNamespace": "apps",
        }
        host = PluginHost(NacosPlugin, config)
        cases = [
            ("namespaceId=0b9f-uuid", "provider.shop.0b9f-uuid"),
            ("namespaceId=dev", "provider.dev.dev"),
            ("namespaceId=public", "provider.apps.public"),
            ("namespaceId=", "provider.apps.public"),
        ]
        for query, expected in cases:
            host.new_exchange()
            path = f"{V1_PATH}?serviceName=provider&{query}"
            body, _ = exchange(host, path, v1_answer("DEFAULT_GROUP", "provider", INSTANCES))
            assert {h["ip"] for h in hosts_of(body)} == {expected}

    def test_explicit_map_and_ports(self) -> None:
        """The per-service map wins over the template (a grouped key over a plain one);
        a mapped port replaces every instance's port."""
        config = {
            "services": {"provider": "plain.example", "blue@@provider": "blue.example."},
            "ports": {"provider": 80},
        }
        host = PluginHost(NacosPlugin, config)
        body, _ = exchange(
            host, f"{V1_PATH}?serviceName=blue@@provider", v1_answer("blue", "provider", INSTANCES)
        )
        assert {(h["ip"], h["port"]) for h in hosts_of(body)} == {("blue.example", 80)}
        host.new_exchange()
        body, _ = exchange(
            host, f"{V1_PATH}?serviceName=provider", v1_answer("DEFAULT_GROUP", "provider", [])
        )
        assert hosts_of(body) == []
        assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome="no_instances") == 1

    def test_host_name_is_lower_cased(self) -> None:
        """Template output is a host name: lower case."""
        host = PluginHost(NacosPlugin, {})
        path = f"{V1_PATH}?serviceName=Order-Service&namespaceId=Shop"
        body, _ = exchange(host, path, v1_answer("DEFAULT_GROUP", "Order-Service", INSTANCES))
        assert {h["ip"] for h in hosts_of(body)} == {"order-service.shop.svc.cluster.local"}


class TestOnlyQueriesPayForBodies:
    def test_other_traffic_skips_the_response(self) -> None:
        """Any other request: the plugin is done after its request headers and Envoy is told
        to send no response phase at all."""
        host = PluginHost(NacosPlugin, {})
        step = host.request_headers({":path": "/api/orders?serviceName=x"})
        assert mode_of(step)["response_header_mode"] == "SKIP"
        assert mode_of(step)["response_body_mode"] == "NONE"
        host.new_exchange()
        step = host.request_headers({":path": V1_PATH + "?serviceName=x", ":method": "POST"})
        assert mode_of(step)["response_header_mode"] == "SKIP"

    def test_a_query_asks_for_the_buffered_answer(self) -> None:
        """A Nacos query: the response body is asked for whole (BUFFERED), the request
        body is not, and Accept-Encoding is removed so the answer comes uncompressed."""
        host = PluginHost(NacosPlugin, {})
        step = host.request_headers(
            {":path": V1_PATH + "?serviceName=x", "accept-encoding": "gzip,deflate,sdch"}
        )
        assert mode_of(step)["response_body_mode"] == "BUFFERED"
        assert mode_of(step)["request_body_mode"] == "NONE"
        assert "accept-encoding" not in step.headers

    def test_accept_encoding_can_be_kept(self) -> None:
        """stripAcceptEncoding: false leaves the client's Accept-Encoding alone."""
        host = PluginHost(NacosPlugin, {"stripAcceptEncoding": False})
        step = host.request_headers(
            {":path": V1_PATH + "?serviceName=x", "accept-encoding": "gzip"}
        )
        assert step.headers["accept-encoding"] == "gzip"

    def test_custom_paths(self) -> None:
        """Nacos behind another context path: the configured paths are the queries."""
        host = PluginHost(NacosPlugin, {"paths": ["/registry/v1/ns/instance/list"]})
        answer = v1_answer("DEFAULT_GROUP", "provider", INSTANCES)
        body, _ = exchange(host, "/registry/v1/ns/instance/list?serviceName=provider", answer)
        assert body != answer
        host.new_exchange()
        step = host.request_headers({":path": V1_PATH + "?serviceName=provider"})
        assert mode_of(step)["response_header_mode"] == "SKIP"


class TestBadInputPassesThrough:
    def counted(self, host: PluginHost, outcome: str | None = None) -> float:
        if outcome is None:
            return host.metric("asm_proxy_plugin_discovery_answers_total")
        return host.metric("asm_proxy_plugin_discovery_answers_total", outcome=outcome)

    @pytest.mark.parametrize(
        ("answer", "outcome"),
        [
            (b"<html>oops</html>", "not_json"),
            (v1_answer("DEFAULT_GROUP", "provider", INSTANCES)[:-7], "not_json"),
            (b'{"hosts": {"ip": "10.0.0.1"}}', "unexpected_shape"),
            (b'{"hosts": [{"ip": 10}]}', "unexpected_shape"),
            (b'{"hosts": [{"ip": "10.0.0.1"}, "junk"]}', "unexpected_shape"),
            (b'{"code": 0, "message": "success", "data": null}', "unexpected_shape"),
            (b'{"code": 21008, "message": "service not exist", "data": "x"}', "error_answer"),
            (b'["10.0.0.1"]', "unexpected_shape"),
            (b"\xff\xfe{}", "not_json"),
            (b"", "not_json"),
        ],
    )
    def test_unusable_answers(self, answer: bytes, outcome: str) -> None:
        """Non-JSON, truncated and oddly shaped answers reach the client unchanged, counted."""
        host = PluginHost(NacosPlugin, {})
        body, step = exchange(host, V1_PATH + "?serviceName=provider", answer)
        assert body == answer
        assert not step.body_mutated
        assert step.immediate is None
        assert self.counted(host, outcome) == 1
        assert step.metadata["asm-proxy"]["nacos"] == {"result": outcome}

    @pytest.mark.parametrize(
        ("headers", "outcome"),
        [
            ({":status": "500"}, "status"),
            ({"content-encoding": "gzip"}, "encoded"),
            ({"content-type": "text/html"}, "not_json"),
        ],
    )
    def test_answers_refused_at_their_headers_skip_the_body(
        self, headers: dict[str, str], outcome: str
    ) -> None:
        """An error status, a compressed or a non-JSON answer: the plugin is done at the
        response headers, so Envoy does not send the body."""
        host = PluginHost(NacosPlugin, {})
        host.request_headers({":path": V1_PATH + "?serviceName=provider"})
        step = host.response_headers({**JSON_HEADERS, **headers})
        assert mode_of(step)["response_body_mode"] == "NONE"
        assert self.counted(host, outcome) == 1

    def test_incomplete_answer(self) -> None:
        """A prefix (Envoy's BUFFERED_PARTIAL past its limit) is left alone."""
        host = PluginHost(
            NacosPlugin, {}, protocol={"response_body_mode": BodySendMode.BUFFERED_PARTIAL}
        )
        answer = v1_answer("DEFAULT_GROUP", "provider", INSTANCES)
        host.request_headers({":path": V1_PATH + "?serviceName=provider"})
        host.response_headers(JSON_HEADERS)
        (step,) = host.response_body(answer[:50], end_of_stream=False)
        assert not step.body_mutated
        assert self.counted(host, "incomplete") == 1

    @pytest.mark.parametrize(
        "query", ["serviceName=", "groupName=x", "serviceName=providers:com.acme.Api:1.0:"]
    )
    def test_unmappable_queries(self, query: str) -> None:
        """No service name, or one that makes no host name: left alone, response skipped."""
        host = PluginHost(NacosPlugin, {})
        step = host.request_headers({":path": f"{V1_PATH}?{query}"})
        assert mode_of(step)["response_header_mode"] == "SKIP"
        assert self.counted(host) == 1


def test_exchange_without_request_headers() -> None:
    """Response phases of an exchange whose request headers were never seen: left alone."""
    host = PluginHost(NacosPlugin, {})
    host.response_headers(JSON_HEADERS)
    steps = host.response_body(b'{"hosts": [{"ip": "10.0.0.1", "port": 1}]}')
    assert [s.immediate for s in steps] == [None]
    assert not steps[0].body_mutated


class TestConfig:
    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"hostTemplate": "{service}.{cluster}"}, "unknown"),
            ({"hostTemplate": "{namespace}.svc"}, "must contain {service}"),
            ({"hostTemplate": "{service"}, "template"),
            ({"services": {"a": "not a host"}}, "not a host name"),
            ({"ports": {"a": 70000}}, "1-65535"),
            ({"paths": ["nacos/v1/ns/instance/list"]}, "must start with"),
            ({"hostTemplte": "{service}"}, "Extra inputs"),
        ],
    )
    def test_bad_config_is_refused(self, config: dict[str, Any], message: str) -> None:
        """Mistakes are refused at load time, naming the problem."""
        with pytest.raises(ValidationError, match=message):
            NacosPlugin.Config.model_validate(config)


# --------------------------------------------------------------------------------------
# Property-based: the rewriter never changes anything but ip/port, and never raises.

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=8,
)
instances = st.fixed_dictionaries(
    {
        "ip": st.ip_addresses().map(str),
        "port": st.integers(min_value=1, max_value=65535),
        "weight": st.floats(min_value=0, max_value=100),
        "healthy": st.booleans(),
        "metadata": st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4),
        "instanceId": st.text(max_size=40),
    },
    optional={"extra": json_values, "clusterName": st.text(), "ephemeral": st.booleans()},
)
answers = st.fixed_dictionaries(
    {"hosts": st.lists(instances, min_size=1, max_size=5)},
    optional={
        "name": st.text(),
        "checksum": st.text(),
        "cacheMillis": st.integers(min_value=0, max_value=2**31),
        "lastRefTime": st.integers(min_value=0, max_value=2**62),
        "metadata": st.dictionaries(st.text(), json_values, max_size=3),
    },
)
ports = st.none() | st.integers(min_value=1, max_value=65535)


def _check_only_ip_and_port_changed(
    before: dict[str, Any], after: dict[str, Any], port: int | None
) -> None:
    assert {k: v for k, v in before.items() if k != "hosts"} == {
        k: v for k, v in after.items() if k != "hosts"
    }
    assert list(after) == list(before)  # key order kept too
    for old, new in zip(before["hosts"], after["hosts"], strict=True):
        assert new["ip"] == "svc.ns.svc.cluster.local"
        assert new["port"] == (port if port is not None else old["port"])
        assert {k: v for k, v in old.items() if k not in ("ip", "port")} == {
            k: v for k, v in new.items() if k not in ("ip", "port")
        }
        assert list(new) == list(old)


@given(answers, ports)
def test_v1_rewrite_changes_only_ip_and_port(answer: dict[str, Any], port: int | None) -> None:
    """Random instance lists, metadata and unicode: only ip (and a mapped port) change."""
    result = rewrite_instances(orjson.dumps(answer), "svc.ns.svc.cluster.local", port)
    assert result.outcome == "rewritten"
    assert result.body is not None
    _check_only_ip_and_port_changed(answer, orjson.loads(result.body), port)


@given(answers, ports)
def test_v2_rewrite_keeps_the_wrapper(answer: dict[str, Any], port: int | None) -> None:
    """The same inside v2's {code, message, data} wrapper."""
    wrapped = {"code": 0, "message": "success", "data": answer}
    result = rewrite_instances(orjson.dumps(wrapped), "svc.ns.svc.cluster.local", port)
    assert result.body is not None
    after = orjson.loads(result.body)
    assert (after["code"], after["message"]) == (0, "success")
    _check_only_ip_and_port_changed(answer, after["data"], port)


@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    """Arbitrary bytes: an outcome, never an exception, never a rewrite of non-JSON."""
    result = rewrite_instances(data, "svc.ns.svc.cluster.local")
    assert result.outcome in {"not_json", "unexpected_shape", "error_answer", "no_instances"}
    assert result.body is None


@given(json_values)
def test_any_json_never_raises(value: Any) -> None:
    """Any JSON document: either rewritten into valid JSON, or left alone."""
    result = rewrite_instances(orjson.dumps(value), "svc.ns.svc.cluster.local", 80)
    if result.body is not None:
        orjson.loads(result.body)


@given(answers, st.data())
def test_truncated_answers_are_left_alone(answer: dict[str, Any], data: st.DataObject) -> None:
    """Any proper prefix of an answer is not JSON: left alone."""
    raw = orjson.dumps(answer)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    assert rewrite_instances(raw[:cut], "svc.ns.svc.cluster.local").body is None


def test_deep_nesting_is_left_alone() -> None:
    """A document nested deeper than orjson writes is not rewritten, and nothing raises."""
    deep = b'{"hosts": [{"ip": "10.0.0.1", "port": 1, "m": ' + b"[" * 300 + b"]" * 300 + b"}]}"
    assert rewrite_instances(deep, "svc").body is None
