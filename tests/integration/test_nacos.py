"""`nacos` through real Envoy: a Spring-Cloud-like client discovers a provider through a
Nacos-like registry, gets the service host instead of pod IPs, and calls it by that host."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from asm_proxy.envoy_bootstrap import ExtProc, Route
from tests.integration.conftest import Stack, StackFactory
from tests.support import http1
from tests.support.nacos import Instance, NacosServer, running_nacos

ANSWERS = "asm_proxy_plugin_discovery_answers_total"

PROVIDER = "provider.shop.svc.cluster.local"
CONFIG = """
plugins:
  - name: nacos
    type: nacos
    failStrategy: FAIL_OPEN
    config:
      namespaces: {0b9f7e3c-shop: shop}
      stripAcceptEncoding: %s
"""
ROUTES = [
    Route("nacos", domains=["nacos", "nacos:*"]),
    Route("b", domains=[PROVIDER, PROVIDER + ":*"]),
    Route("a", domains=["*"]),
]
V1 = "/nacos/v1/ns/instance/list?serviceName=DEFAULT_GROUP%40%40provider&namespaceId=0b9f7e3c-shop&clusters=&healthyOnly=false"
V2 = "/nacos/v2/ns/instance/list?serviceName=provider&groupName=DEFAULT_GROUP&namespaceId=0b9f7e3c-shop"
# What the Nacos 1.x Java client sends with its queries.
CLIENT_HEADERS = [
    ("accept-encoding", "gzip,deflate,sdch"),
    ("user-agent", "Nacos-Java-Client:v1.4.6"),
]


@pytest.fixture
def nacos() -> Iterator[NacosServer]:
    with running_nacos() as server:
        yield server


def nacos_stack(
    stack: StackFactory, nacos: NacosServer, *, strip: bool = True, ext_proc: ExtProc | None = None
) -> Stack:
    return stack(
        CONFIG % ("true" if strip else "false"),
        routes=ROUTES,
        clusters={"nacos": nacos.port},
        ext_proc=ext_proc,
        access_log_keys=("nacos",),
    )


def register(s: Stack, ip: str, port: int, metadata: dict[str, str]) -> None:
    """A provider registering itself, through the same Envoy (the plugin leaves it alone)."""
    resp = s.post(
        "/nacos/v1/ns/instance",
        params={
            "serviceName": "DEFAULT_GROUP@@provider",
            "ip": ip,
            "port": str(port),
            "namespaceId": "0b9f7e3c-shop",
            "metadata": orjson.dumps(metadata).decode(),
        },
        headers={"host": "nacos:8848"},
    )
    assert (resp.status_code, resp.text) == (200, "ok")


def query(s: Stack, path: str) -> tuple[http1.Reply, dict[str, Any]]:
    """A discovery query over a raw HTTP/1.1 connection (h11 checks the framing: a wrong
    content-length fails here)."""
    reply = http1.request(
        s.envoy.port, "GET", path, headers=[("host", "nacos:8848"), *CLIENT_HEADERS]
    )
    assert reply.status == 200
    body = (
        gzip.decompress(reply.body)
        if reply.headers.get("content-encoding") == "gzip"
        else reply.body
    )
    doc = orjson.loads(body)
    return reply, doc.get("data", doc)


def call_instance(s: Stack, instance: dict[str, Any]) -> Any:
    """What Spring Cloud LoadBalancer does next: call http://{ip}:{port}/ (via the sidecar)."""
    return s.get("/hello", headers={"host": f"{instance['ip']}:{instance['port']}"})


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_discovery_then_call_by_service_host(
    stack: StackFactory, nacos: NacosServer, api: str, chunked: bool
) -> None:
    """Register two pods, query (v1 or v2), get the service host for each, call it: the call
    reaches the provider's cluster; every other field of the answer is as Nacos sent it."""
    nacos.chunked = chunked
    s = nacos_stack(stack, nacos)
    register(s, "10.244.1.7", 8080, {"version": "v1", "zone": "华东-1"})
    register(s, "10.244.2.9", 8080, {"version": "v2", "preserved": "ü"})
    reply, info = query(s, V1 if api == "v1" else V2)
    original = orjson.loads(nacos.handle("GET", V1 if api == "v1" else V2)[2])
    original = original.get("data", original)

    assert [h["ip"] for h in info["hosts"]] == [PROVIDER, PROVIDER]
    for got, sent in zip(info["hosts"], original["hosts"], strict=True):
        assert got == {**sent, "ip": PROVIDER}
    assert {k: v for k, v in info.items() if k != "hosts"} == {
        k: v for k, v in original.items() if k != "hosts"
    }
    assert info["hosts"][0]["metadata"]["zone"] == "华东-1"
    if not chunked:
        assert int(reply.headers["content-length"]) == len(reply.body)
    assert "accept-encoding" not in nacos.requests[-1].headers

    resp = call_instance(s, info["hosts"][0])
    assert resp.status_code == 200
    assert resp.headers["x-upstream"] == "b"
    assert s.seen("b").header("host") == f"{PROVIDER}:8080"

    log = s.log_entries(4)
    assert log[2]["md_nacos"]["result"] == "rewritten"
    assert log[2]["md_nacos"]["instances"] == 2
    assert log[3]["upstream_cluster"] == "b"
    assert s.metric(ANSWERS, outcome="rewritten") == 1


@pytest.mark.parametrize(
    "mode", ["NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"]
)
def test_envoy_body_modes(stack: StackFactory, nacos: NacosServer, mode: str) -> None:
    """Whatever response body mode Envoy is configured with, the client gets the rewritten
    answer with framing that matches it: the new content-length where Envoy buffers
    (asm-proxy asks for BUFFERED unless the mode is partial or full duplex), chunked
    otherwise."""
    nacos.register("provider", Instance("10.244.1.7", 8080), namespace="0b9f7e3c-shop")
    trailers = "SEND" if mode == "FULL_DUPLEX_STREAMED" else "SKIP"
    ext_proc = ExtProc(response_body_mode=mode, response_trailer_mode=trailers)
    s = nacos_stack(stack, nacos, ext_proc=ext_proc)
    reply, info = query(s, V1)
    assert [h["ip"] for h in info["hosts"]] == [PROVIDER]
    sent = nacos.handle("GET", V1)[2]
    assert len(reply.body) != len(sent)
    if mode in ("NONE", "STREAMED", "BUFFERED"):
        assert int(reply.headers["content-length"]) == len(reply.body)
    else:
        assert reply.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("mode", ["NONE", "BUFFERED_PARTIAL"])
def test_other_traffic_pays_for_request_headers_only(
    stack: StackFactory, nacos: NacosServer, mode: str
) -> None:
    """Requests that are not discovery queries: one message to asm-proxy each (the
    response is not sent), bodies and headers untouched; a query costs three. The same
    with Envoy configured to send response bodies (BUFFERED_PARTIAL, as the docs advise)."""
    nacos.register("provider", Instance("10.244.1.7", 8080), namespace="0b9f7e3c-shop")
    s = nacos_stack(stack, nacos, ext_proc=ExtProc(response_body_mode=mode))
    for _ in range(3):
        resp = s.get("/api/orders", headers={"x-echo-body": "10.244.1.7"})
        assert resp.text == "10.244.1.7"
    assert s.envoy.ext_proc_stats()["stream_msgs_sent"] == 3
    query(s, V1)
    assert s.envoy.ext_proc_stats()["stream_msgs_sent"] == 3 + 3


def test_compressed_answer_passes_through(stack: StackFactory, nacos: NacosServer) -> None:
    """With stripAcceptEncoding off and a Nacos that compresses, the gzip answer reaches the
    client unchanged (pod IPs), counted; with it on (the default), the answer is plain and
    rewritten."""
    nacos.gzip = True
    nacos.register("provider", Instance("10.244.1.7", 8080), namespace="0b9f7e3c-shop")
    s = nacos_stack(stack, nacos, strip=False)
    reply, info = query(s, V1)
    assert reply.headers["content-encoding"] == "gzip"
    assert [h["ip"] for h in info["hosts"]] == ["10.244.1.7"]
    assert s.metric(ANSWERS, outcome="encoded") == 1

    s2 = nacos_stack(stack, nacos, strip=True)
    reply, info = query(s2, V1)
    assert "content-encoding" not in reply.headers
    assert [h["ip"] for h in info["hosts"]] == [PROVIDER]


def test_bad_answers_pass_through(stack: StackFactory, nacos: NacosServer) -> None:
    """A query answered with non-JSON or an error status: the client gets it as sent."""
    s = nacos_stack(stack, nacos)
    # The echo upstream "a" plays a broken registry.
    for headers, outcome in [
        ({"x-echo-body": '{"hosts": [', "x-echo-content-type": "application/json"}, "not_json"),
        ({"x-echo-body": "<html>busy</html>", "x-echo-content-type": "text/html"}, "not_json"),
        ({"x-echo-body": "down", "x-echo-status": "503"}, "status"),
    ]:
        resp = s.get(V1, headers={"host": "registry.local", **headers})
        assert resp.text == headers["x-echo-body"]
        assert s.metric(ANSWERS, outcome=outcome) >= 1
    log = s.log_entries(3)
    assert [e["md_nacos"]["result"] for e in log] == ["not_json", "not_json", "status"]
    assert [e["code"] for e in log] == [200, 200, 503]


@pytest.mark.parametrize(
    ("mode", "status"), [("BUFFERED_PARTIAL", 200), ("NONE", 500)], ids=["partial", "default"]
)
def test_answer_larger_than_envoys_buffer(
    stack: StackFactory, nacos: NacosServer, mode: str, status: int
) -> None:
    """A 2 MB answer (over Envoy's 1 MiB buffer): with response_body_mode BUFFERED_PARTIAL
    it reaches the client unchanged (counted incomplete); in BUFFERED mode (what asm-proxy
    asks for otherwise) Envoy itself fails it with a 500, as the docs warn."""
    for i in range(6000):
        ip = f"10.244.{i // 250}.{i % 250}"
        nacos.register(
            "provider", Instance(ip, 8080, metadata={"pad": "x" * 200}), namespace="0b9f7e3c-shop"
        )
    s = nacos_stack(stack, nacos, ext_proc=ExtProc(response_body_mode=mode))
    reply = http1.request(s.envoy.port, "GET", V1, headers=[("host", "nacos:8848")])
    assert reply.status == status
    if status == 200:
        assert len(reply.body) > 2_000_000
        assert reply.body == nacos.handle("GET", V1)[2]
        assert s.metric(ANSWERS, outcome="incomplete") == 1
    else:
        assert s.log_entries(1)[0]["details"] == "response_payload_too_large"
