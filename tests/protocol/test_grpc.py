"""The real gRPC server: statuses on misuse, health, ext_authz Check, and fuzzed streams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings

from asm_proxy.testing import messages
from asm_proxy.wire import auth, check_stub, ext_proc, process_stub
from tests.protocol.test_fuzz import exchange
from tests.support.background import ServerThread

CONFIG = """
plugins:
  - {name: gate, type: 'tests.support.plugins:Gate', phase: AUTHN, match: [{paths: [{prefix: /gate}]}]}
  - {name: tag, type: headers, phase: STATS, config: {request: {set: {x-tag: '1'}}}}
  - {name: upper, type: 'tests.support.plugins:UpperBody', match: [{paths: [{prefix: /body}]}]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[ServerThread]:
    path = Path(tmp_path_factory.mktemp("grpc")) / "config.yaml"
    path.write_text(CONFIG)
    thread = ServerThread(path, transport=transport)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def process(channel: grpc.Channel, msgs: list) -> list:
    return list(process_stub(channel)(iter(msgs), timeout=10))


def test_health(channel: grpc.Channel) -> None:
    """grpc.health.v1 answers SERVING for the server and both services."""
    stub = health_pb2_grpc.HealthStub(channel)
    for service in (
        "",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "envoy.service.auth.v3.Authorization",
    ):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_exchange_over_grpc(channel: grpc.Channel) -> None:
    """A request through the real server gets its replies, mutations included."""
    replies = process(
        channel, [messages.request_headers([(":path", "/x"), (":method", "GET")], True)]
    )
    (reply,) = replies
    mutation = reply.request_headers.response.header_mutation
    assert [(h.header.key, h.header.raw_value) for h in mutation.set_headers] == [("x-tag", b"1")]


def test_protocol_error_is_a_status_and_the_server_goes_on(channel: grpc.Channel) -> None:
    """Out-of-order messages end that stream with FAILED_PRECONDITION and a message; other
    streams are served as before."""
    # /body: a body plugin applies, so the stream stays open after the first answer.
    headers = messages.request_headers([(":path", "/body")], False)
    with pytest.raises(grpc.RpcError) as info:
        process(channel, [headers, messages.request_headers([(":path", "/body")], False)])
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "request_headers received after request headers" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        process(channel, [ext_proc.ProcessingRequest()])
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(process(channel, [messages.request_headers([(":path", "/")], True)])) == 1


def test_stream_ends_once_nothing_more_is_needed(channel: grpc.Channel) -> None:
    """When the chain needs nothing after the request headers, the server answers them and
    ends the stream with OK: Envoy then carries on without sending the rest."""
    from asm_proxy.stats import counters

    before = counters.streams_closed_early
    call = process_stub(channel)(
        iter([messages.request_headers([(":path", "/x"), (":method", "POST")], False)]),
        timeout=10,
    )
    replies = list(call)
    assert len(replies) == 1 and call.code() is grpc.StatusCode.OK
    assert counters.streams_closed_early == before + 1
    # With a body plugin in the exchange the stream stays open for the body.
    replies = process(
        channel,
        [
            messages.request_headers([(":path", "/body"), (":method", "POST")], False),
            messages.request_body(b"abc", True),
        ],
    )
    assert len(replies) == 2
    assert counters.streams_closed_early == before + 1


def test_garbage_bytes(server: ServerThread) -> None:
    """Bytes that are not a ProcessingRequest get a gRPC error, and the server lives on."""
    with grpc.insecure_channel(server.address) as ch:
        call = ch.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([b"\xff\xff\xff\xff"]), timeout=5))
        assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        stub = health_pb2_grpc.HealthStub(ch)
        assert (
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def check_request(path: str, headers: dict[str, str]) -> auth.CheckRequest:
    ctx = auth.AttributeContext()
    http = ctx.request.http
    http.method, http.path, http.host = "GET", path, "example.com"
    http.headers.update(headers)
    return auth.CheckRequest(attributes=ctx)


def test_authz_allow_with_header_changes(channel: grpc.Channel) -> None:
    """Check allows with the AUTHN/AUTHZ plugins' header changes and metadata;
    plugins of other phases do not run."""
    stub = check_stub(channel)
    reply = stub(check_request("/gate", {"x-allow": "yes"}), timeout=5)
    assert reply.status.code == 0
    headers = {h.header.key: h.header.value for h in reply.ok_response.headers}
    assert headers == {"x-user": "alice"}  # no x-tag: STATS does not run in Check
    assert list(reply.ok_response.headers_to_remove) == ["x-allow"]
    assert dict(reply.dynamic_metadata) == {"user": "alice"}


def test_authz_deny(channel: grpc.Channel) -> None:
    """A Respond becomes a denied response: status, headers, body; 401 is UNAUTHENTICATED."""
    stub = check_stub(channel)
    reply = stub(check_request("/gate", {}), timeout=5)
    assert reply.status.code == 16
    assert reply.denied_response.status.code == 401
    assert reply.denied_response.body == "who are you?\n"
    headers = {h.header.key: h.header.value for h in reply.denied_response.headers}
    assert headers["www-authenticate"] == 'Bearer realm="test"'
    reply = stub(check_request("/gate", {"x-allow": "no"}), timeout=5)
    assert (reply.status.code, reply.denied_response.status.code) == (7, 403)


@settings(max_examples=40)
@given(exchange())
def test_fuzzed_streams_over_grpc(channel: grpc.Channel, case) -> None:
    """Random message sequences over real gRPC: the stream ends cleanly or with a status
    that has a message, never a hang; the server keeps serving."""
    protocol, msgs, _ = case
    if msgs:
        msgs[0].protocol_config.SetInParent()
        for key, value in protocol.items():
            setattr(msgs[0].protocol_config, key, value)
    try:
        process(channel, msgs)
    except grpc.RpcError as err:
        assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
        assert err.details()
    assert len(process(channel, [messages.request_headers([(":path", "/")], True)])) == 1


def test_authz_denied_repeated_headers_are_joined() -> None:
    """Envoy's ext_authz keeps one value per name in a denial, so repeats are comma-joined."""
    from asm_proxy.authz import denied
    from asm_proxy.plugin import Respond

    reply = denied(
        Respond(
            401, headers=[("www-authenticate", "Bearer"), ("www-authenticate", "Basic realm=x")]
        ),
        None,
    )
    headers = [(h.header.key, h.header.value) for h in reply.denied_response.headers]
    assert headers == [("www-authenticate", "Bearer, Basic realm=x")]


def test_reset_before_the_final_status_is_counted_not_logged() -> None:
    """Envoy may reset a stream the moment it has asm-proxy's last answer; grpc.aio's error
    about the status it then cannot send is counted, not logged; other errors still are."""
    import logging

    from asm_proxy.stats import counters
    from asm_proxy.transport.grpcio import _quiet_grpc_resets

    _quiet_grpc_resets()  # what the grpcio transport does when it starts
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    before = counters.streams_reset_before_status
    method = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    record = grpc_log.makeRecord(
        grpc_log.name,
        logging.ERROR,
        __file__,
        1,
        f"ExecuteBatchError raised in core by servicer method [{method}]",
        (),
        None,
    )
    assert grpc_log.filter(record) is False
    assert counters.streams_reset_before_status == before + 1
    other = grpc_log.makeRecord(
        grpc_log.name, logging.ERROR, __file__, 1, "something else broke", (), None
    )
    assert grpc_log.filter(other) is True
