"""The `nacos_grpc` built-in through the shared test host: Nacos 2 gRPC messages in Envoy's
chunks, as STREAMED body mode delivers them."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from asm_proxy.testing import PluginHost, Step, mode_of
from asm_proxy_handlers.discovery.grpc_frames import frame
from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Payload
from asm_proxy_handlers.nacos_grpc import NacosGrpcPlugin, peek_type
from tests.support.nacos import Instance
from tests.support.nacos_grpc import grpc_service_info, payload

NS = "0b9f7e3c-shop"
CONFIG = {"namespaces": {NS: "shop"}, "ports": {"provider": 80}}
HOST = "provider.shop.svc.cluster.local"
GRPC = {":method": "POST", "content-type": "application/grpc"}
PODS = [Instance("10.244.1.7", 8080, metadata={"zone": "华东-1"}), Instance("10.244.2.9", 8080)]


def msg(kind: str, body: dict[str, Any]) -> bytes:
    return frame(payload(kind, body).SerializeToString())


def answer(kind: str = "SubscribeServiceResponse", pods: list[Instance] = PODS) -> bytes:
    info = grpc_service_info("DEFAULT_GROUP", "provider", pods)
    return msg(kind, {"serviceInfo": info, "resultCode": 200, "errorCode": 0, "requestId": "7"})


def subscribe(namespace: str = NS) -> bytes:
    body = {"namespace": namespace, "serviceName": "provider", "groupName": "DEFAULT_GROUP"}
    return msg("SubscribeServiceRequest", {**body, "subscribe": True, "requestId": "7"})


def unary(host: PluginHost, request: bytes) -> Step:
    host.request_headers({**GRPC, ":path": "/Request/request"}, end_of_stream=False)
    host.request_body(request, end_of_stream=True)
    return host.response_headers({"content-type": "application/grpc"})


def sent(steps: list[Step], data: bytes) -> bytes:
    """What Envoy forwards for a body message: the replacement, or the chunk as it came."""
    (step,) = steps
    return data if step.body is None else step.body


def messages(data: bytes) -> list[tuple[str, Any]]:
    out = []
    while data:
        assert data[0] == 0
        length = int.from_bytes(data[1:5], "big")
        p = Payload.FromString(data[5 : 5 + length])
        out.append((p.metadata.type, orjson.loads(p.body.value)))
        data = data[5 + length :]
    return out


def test_a_subscription_answer_names_the_service_host() -> None:
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    step = unary(host, subscribe())
    assert mode_of(step)["response_body_mode"] == "STREAMED"
    data = answer()
    out = sent(host.response_body(data, end_of_stream=False), data)
    ((kind, doc),) = messages(out)
    before = orjson.loads(Payload.FromString(data[5:]).body.value)
    assert kind == "SubscribeServiceResponse"
    for old, new in zip(before["serviceInfo"]["hosts"], doc["serviceInfo"]["hosts"], strict=True):
        assert new == {**old, "ip": HOST, "port": 80}
    assert {k: v for k, v in doc.items() if k != "serviceInfo"} == {
        k: v for k, v in before.items() if k != "serviceInfo"
    }
    assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome="rewritten") == 1
    assert host.metric("asm_proxy_plugin_discovery_instances_rewritten_total") == 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 2000), max_size=6))
def test_any_chunking_of_an_answer(cuts: list[int]) -> None:
    """However Envoy cuts the answer into chunks, the client gets the one rewritten message."""
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    unary(host, subscribe())
    data = answer("QueryServiceResponse", PODS * 5)
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    out = b""
    for a, b in itertools.pairwise(points):
        out += sent(host.response_body(data[a:b], end_of_stream=False), data[a:b])
    ((kind, doc),) = messages(out)
    assert kind == "QueryServiceResponse"
    assert {(h["ip"], h["port"]) for h in doc["serviceInfo"]["hosts"]} == {(HOST, 80)}


def test_calls_without_instances_skip_the_answer() -> None:
    """A health check (or any unary call that is not a query) needs nothing of its answer."""
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    host.request_headers({**GRPC, ":path": "/Request/request"}, end_of_stream=False)
    (step,) = host.request_body(msg("HealthCheckRequest", {"requestId": "1"}), end_of_stream=True)
    step = host.response_headers({"content-type": "application/grpc"})
    assert mode_of(step)["response_body_mode"] == "NONE"


def test_other_traffic_costs_one_header_message() -> None:
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    step = host.request_headers({":path": "/nacos/v1/ns/instance/list"})
    assert mode_of(step)["response_header_mode"] == "SKIP"


def bi_stream(host: PluginHost, tenant: str | None, connection: int | None = None) -> None:
    attributes = {"connection.id": connection} if connection else None
    host.request_headers(
        {**GRPC, ":path": "/BiRequestStream/requestBiStream"},
        end_of_stream=False,
        attributes=attributes,
    )
    setup = {"clientVersion": "Nacos-Java-Client:v2.4.2", "labels": {}, "tenant": tenant}
    host.request_body(msg("ConnectionSetupRequest", setup), end_of_stream=False)
    host.response_headers({"content-type": "application/grpc"})


def test_pushes_are_rewritten_and_the_rest_passes_untouched() -> None:
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    bi_stream(host, NS)
    ack = msg("SetupAckRequest", {"abilityTable": {}, "requestId": "0", "module": "internal"})
    (step,) = host.response_body(ack, end_of_stream=False)
    assert not step.body_mutated  # not ours: Envoy sends it on as it came
    push = answer("NotifySubscriberRequest")
    out = sent(host.response_body(ack + push + ack, end_of_stream=False), ack + push + ack)
    kinds = messages(out)
    assert [k for k, _ in kinds] == [
        "SetupAckRequest",
        "NotifySubscriberRequest",
        "SetupAckRequest",
    ]
    assert out.startswith(ack) and out.endswith(ack)
    assert {h["ip"] for h in kinds[1][1]["serviceInfo"]["hosts"]} == {HOST}


def test_a_push_without_a_known_namespace() -> None:
    """No tenant on the connection and no request seen on it: a host that depends on the
    namespace cannot be known, and the push passes as it came; an explicit one can."""
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    bi_stream(host, None)
    push = answer("NotifySubscriberRequest")
    (step,) = host.response_body(push, end_of_stream=False)
    assert not step.body_mutated
    assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome="unknown_namespace") == 1

    explicit = PluginHost(NacosGrpcPlugin, {"services": {"provider": "p.legacy.svc"}})
    bi_stream(explicit, None)
    out = sent(explicit.response_body(push, end_of_stream=False), push)
    assert {h["ip"] for h in messages(out)[0][1]["serviceInfo"]["hosts"]} == {"p.legacy.svc"}


def test_a_push_takes_the_namespace_a_request_named_on_its_connection() -> None:
    """The Java client sets up its connection without a tenant; its subscription (another
    call on the same client connection) names the namespace, and the push uses it."""
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    host.request_headers(
        {**GRPC, ":path": "/Request/request"}, end_of_stream=False, attributes={"connection.id": 42}
    )
    host.request_body(subscribe(), end_of_stream=True)
    host.new_exchange()
    bi_stream(host, None, connection=42)
    push = answer("NotifySubscriberRequest")
    out = sent(host.response_body(push, end_of_stream=False), push)
    assert {h["ip"] for h in messages(out)[0][1]["serviceInfo"]["hosts"]} == {HOST}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(b"\x0a\xff\xff"), "malformed"),
        (
            frame(payload("NotifySubscriberRequest", {}).SerializeToString()[:-1] + b"{"),
            "malformed",
        ),
        (
            msg("NotifySubscriberRequest", {"serviceInfo": {"name": "provider", "hosts": "x"}}),
            "unexpected_shape",
        ),
        (msg("QueryServiceResponse", {"resultCode": 500, "errorCode": 500}), "error_answer"),
    ],
)
def test_bad_messages_pass_byte_for_byte(data: bytes, reason: str) -> None:
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    bi_stream(host, NS)
    assert sent(host.response_body(data, end_of_stream=False), data) == data
    assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome=reason) == 1


def test_compressed_messages_pass_unread() -> None:
    host = PluginHost(NacosGrpcPlugin, CONFIG)
    bi_stream(host, NS)
    data = b"\x01" + answer("NotifySubscriberRequest")[1:]
    assert sent(host.response_body(data, end_of_stream=False), data) == data
    assert host.metric("asm_proxy_plugin_discovery_answers_total", outcome="compressed") == 1


def test_peek_type_needs_only_the_metadata() -> None:
    data = payload("NotifySubscriberRequest", {"serviceInfo": {}}).SerializeToString()
    cut = data.index(b"NotifySubscriberRequest") + len("NotifySubscriberRequest")
    assert peek_type(data[: cut - 1]) is None
    assert peek_type(data[:cut]) == "NotifySubscriberRequest"
    assert peek_type(b"\x1a\x00") == ""  # body first: cannot tell early


def test_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="template field"):
        NacosGrpcPlugin.Config.model_validate({"hostTemplate": "{service}.{datacenter}"})
    with pytest.raises(ValidationError, match="not a host name"):
        NacosGrpcPlugin.Config.model_validate({"services": {"a": "not a host"}})
