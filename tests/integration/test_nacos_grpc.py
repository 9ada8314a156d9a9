"""`nacos_grpc` through real Envoy: the Nacos 2.x/3.x client (nacos-sdk-python, which
speaks the gRPC protocol) against a Nacos 2 gRPC server, asm-proxy rewriting the answers
and the pushes on their way back."""

from __future__ import annotations

import logging
import queue
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyMessage

from asm_proxy.envoy_bootstrap import ExtProc, Route
from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Metadata, Payload
from tests.integration.conftest import Stack, StackFactory
from tests.support.background import BackgroundLoop
from tests.support.nacos import Instance
from tests.support.nacos_grpc import (
    BI_STREAM,
    UNARY,
    NacosGrpcServer,
    cancel_tasks,
    payload,
    running_nacos_grpc,
)
from tests.support.waiting import wait_for

T = TypeVar("T")
PROVIDER = "provider.shop.svc.cluster.local"
# A generous deadline: the client runs in the test's process and its first calls (model
# building) can hold the GIL long enough to starve the in-process server on a loaded machine.
CONFIG = """
deadline: 2s
plugins:
  - name: nacos-grpc
    type: nacos_grpc
    failStrategy: FAIL_OPEN
    config:
      namespaces: {0b9f7e3c-shop: shop}
      ports: {DEFAULT_GROUP@@provider: 80}
"""
NAMESPACE = "0b9f7e3c-shop"


@pytest.fixture
def nacos() -> Iterator[tuple[NacosGrpcServer, BackgroundLoop]]:
    with running_nacos_grpc() as running:
        yield running


def grpc_stack(
    stack: StackFactory, server: NacosGrpcServer, mode: str = "NONE", **kw: Any
) -> Stack:
    trailers = "SEND" if mode == "FULL_DUPLEX_STREAMED" else "SKIP"
    return stack(
        CONFIG,
        routes=[Route("nacos", timeout="0s")],
        clusters={"nacos": server.port},
        grpc_clusters=("nacos",),
        ext_proc=ExtProc(
            # Envoy takes no mode_override in full duplex: both sides are configured so.
            request_body_mode=mode,
            request_trailer_mode=trailers,
            response_body_mode=mode,
            response_trailer_mode=trailers,
            request_attributes=["connection.id"],
            message_timeout="2.5s",
        ),
        access_log_keys=("nacos_grpc",),
        **kw,
    )


def on(loop: BackgroundLoop, fn: Callable[[], T]) -> T:
    """Run `fn` on the server's loop (its queues are that loop's)."""

    async def call() -> T:
        return fn()

    return loop.call(call())


class Client:
    """nacos-sdk-python's naming service on its own loop, pointed at Envoy."""

    def __init__(self, envoy_port: int, namespace: str, cache: Path) -> None:
        with warnings.catch_warnings():  # the client's pydantic models warn on import
            warnings.simplefilter("ignore")
            from v2.nacos import ClientConfigBuilder, NacosNamingService

        self.loop = BackgroundLoop("nacos-client")
        # The client dials the gRPC port as "HTTP port + 1000": Envoy's port is that.
        config = (
            ClientConfigBuilder()
            .server_address(f"127.0.0.1:{envoy_port - 1000}")
            .namespace_id(namespace)
            .cache_dir(str(cache))
            .log_dir(str(cache))
            .log_level(logging.WARNING)
            .load_cache_at_start(False)
            .build()
        )
        self.naming = self.loop.call(NacosNamingService.create_naming_service(config))
        self.pushed: list[list[Any]] = []

    def list_instances(self, service: str) -> list[Any]:
        from v2.nacos import ListInstanceParam

        param = ListInstanceParam(service_name=service, subscribe=True, healthy_only=None)
        return self.loop.call(self.naming.list_instances(param))  # type: ignore[no-any-return]

    def query(self, service: str) -> Any:
        proxy = self.naming.grpc_client_proxy
        return self.loop.call(proxy.query_instance_of_service(service, "DEFAULT_GROUP", "", False))

    def subscribe(self, service: str) -> None:
        from v2.nacos import SubscribeServiceParam

        async def callback(instances: list[Any]) -> None:
            self.pushed.append(instances)

        param = SubscribeServiceParam(service_name=service, subscribe_callback=callback)
        self.loop.call(self.naming.subscribe(param))

    def close(self) -> None:
        try:
            self.loop.call(self.naming.shutdown())
        finally:
            self.loop.call(cancel_tasks())  # the client leaves tasks behind (redo, queues)
            self.loop.close()


@pytest.fixture
def client_factory(tmp_path: Path) -> Iterator[Callable[[Stack, str], Client]]:
    made: list[Client] = []

    def make(s: Stack, namespace: str = NAMESPACE) -> Client:
        client = Client(s.envoy.port, namespace, tmp_path / f"client-{len(made)}")
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize("mode", ["NONE", "FULL_DUPLEX_STREAMED"])
def test_subscribe_query_and_push_carry_service_hosts(
    stack: StackFactory,
    nacos: tuple[NacosGrpcServer, BackgroundLoop],
    client_factory: Callable[[Stack, str], Client],
    mode: str,
) -> None:
    """The client connects (server check, connection setup) through Envoy, subscribes,
    queries, and is pushed a change: every instance list it holds names the service host
    with the mapped port; every other field is as the server sent it. With the filter's
    body modes NONE asm-proxy asks for STREAMED; FULL_DUPLEX_STREAMED (both sides, as Envoy
    then takes no mode_override) works the same."""
    server, loop = nacos
    for ip in ("10.244.1.7", "10.244.2.9"):
        server.register(
            "provider", Instance(ip, 8080, metadata={"zone": "华东-1"}), namespace=NAMESPACE
        )
    s = grpc_stack(stack, server, mode)
    client = client_factory(s, NAMESPACE)

    listed = client.list_instances("provider")  # SubscribeServiceRequest
    assert [(i.ip, i.port) for i in listed] == [(PROVIDER, 80)] * 2
    assert listed[0].metadata == {"zone": "华东-1"}
    assert listed[0].instanceId == "10.244.1.7#8080#DEFAULT#DEFAULT_GROUP@@provider"

    queried = client.query("provider")  # ServiceQueryRequest
    assert {(h.ip, h.port) for h in queried.hosts} == {(PROVIDER, 80)}

    client.subscribe("provider")
    new = [Instance("10.244.3.3", 8080), Instance("10.244.4.4", 8080), Instance("10.244.5.5", 8080)]
    assert on(loop, lambda: server.set_instances("provider", new, namespace=NAMESPACE)) == 1
    pushed = wait_for(lambda: client.pushed, "a push to reach the client")[-1]
    assert [(i.ip, i.port) for i in pushed] == [(PROVIDER, 80)] * 3
    wait_for(
        lambda: (
            "NotifySubscriberResponse" in [a for c in server.connections.values() for a in c.acks]
        ),
        "the client's ack of the push",
    )
    assert s.metric("asm_proxy_plugin_discovery_answers_total", outcome="rewritten") >= 3
    assert s.metric("asm_proxy_plugin_discovery_instances_rewritten_total") >= 7
    assert s.metric("asm_proxy_plugin_discovery_answers_total", outcome="malformed") == 0
    # The server saw the client's own requests, unchanged (the namespace it named).
    kinds = [k for _, k, _ in server.requests]
    assert "ConnectionSetupRequest" in kinds and "SubscribeServiceRequest" in kinds
    setup = next(b for _, k, b in server.requests if k == "ConnectionSetupRequest")
    assert setup["tenant"] == NAMESPACE


def raw_stream(port: int) -> tuple[grpc.Channel, Any]:
    """A gRPC channel through Envoy whose stream answers are the raw message bytes."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    bi = channel.stream_stream(
        BI_STREAM,
        request_serializer=Payload.SerializeToString,
        response_deserializer=lambda b: b,
    )
    return channel, bi


def test_malformed_pushes_pass_byte_for_byte_and_a_java_client_without_tenant(
    stack: StackFactory, nacos: tuple[NacosGrpcServer, BackgroundLoop]
) -> None:
    """A client that, like the Java client, sets up its connection without a tenant and
    names its namespace only in its requests still gets pushes rewritten (the namespace
    this worker saw on the same connection). Pushes that are not a Payload, or whose body
    is not JSON, reach it byte for byte and are counted; the stream goes on after them."""
    server, loop = nacos
    server.register("provider", Instance("10.244.1.7", 8080), namespace=NAMESPACE)
    s = grpc_stack(stack, server)
    channel, bi = raw_stream(s.envoy.port)
    unary = channel.unary_unary(
        UNARY,
        request_serializer=Payload.SerializeToString,
        response_deserializer=Payload.FromString,
    )
    requests: queue.Queue[Payload | None] = queue.Queue()

    def gen() -> Iterator[Payload]:
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    check = unary(payload("ServerCheckRequest", {"headers": {}, "requestId": "1"}), timeout=5)
    assert check.metadata.type == "ServerCheckResponse"
    responses = bi(gen(), timeout=30)
    requests.put(
        payload(
            "ConnectionSetupRequest", {"clientVersion": "Nacos-Java-Client:v2.4.2", "labels": {}}
        )
    )
    first = next(responses)  # SetupAckRequest
    assert Payload.FromString(first).metadata.type == "SetupAckRequest"
    answer = unary(
        payload(
            "SubscribeServiceRequest",
            {
                "namespace": NAMESPACE,
                "serviceName": "provider",
                "groupName": "DEFAULT_GROUP",
                "clusters": "",
                "subscribe": True,
                "headers": {},
                "requestId": "2",
            },
        ),
        timeout=5,
    )
    assert b"provider.shop.svc.cluster.local" in answer.body.value

    (conn,) = wait_for(server.streaming, "the client's stream at the server")
    not_payload = b"\x0a\xff\xff"  # a field cut short: not a Payload
    not_json = Payload(
        metadata=Metadata(type="NotifySubscriberRequest"), body=AnyMessage(value=b"{oops")
    ).SerializeToString()
    on(loop, lambda: server.push_raw(conn.peer, not_payload))
    on(loop, lambda: server.push_raw(conn.peer, not_json))
    assert next(responses) == not_payload
    assert next(responses) == not_json
    on(
        loop,
        lambda: server.set_instances(
            "provider", [Instance("10.244.9.9", 8080)], namespace=NAMESPACE
        ),
    )
    pushed = Payload.FromString(next(responses))
    assert pushed.metadata.type == "NotifySubscriberRequest"
    assert b'"ip":"provider.shop.svc.cluster.local","port":80' in pushed.body.value
    requests.put(None)
    responses.cancel()
    channel.close()
    assert s.metric("asm_proxy_plugin_discovery_answers_total", outcome="malformed") == 2
    assert s.metric("asm_proxy_plugin_discovery_answers_total", outcome="rewritten") == 2


def test_a_large_push_split_across_chunks(
    stack: StackFactory,
    nacos: tuple[NacosGrpcServer, BackgroundLoop],
    client_factory: Callable[[Stack, str], Client],
) -> None:
    """1,000 instances (~300 KB, many HTTP/2 frames and ext_proc chunks) in one push: the
    client gets them all, each with the service host."""
    server, loop = nacos
    server.register("provider", Instance("10.244.1.7", 8080), namespace=NAMESPACE)
    s = grpc_stack(stack, server)
    client = client_factory(s, NAMESPACE)
    client.subscribe("provider")
    many = [Instance(f"10.{i // 250}.{i % 250}.1", 8080 + i % 3) for i in range(1000)]
    on(loop, lambda: server.set_instances("provider", many, namespace=NAMESPACE))
    pushed = wait_for(lambda: [p for p in client.pushed if len(p) == 1000], "the big push")[-1]
    assert {(i.ip, i.port) for i in pushed} == {(PROVIDER, 80)}
    assert len({i.instanceId for i in pushed}) == 1000
