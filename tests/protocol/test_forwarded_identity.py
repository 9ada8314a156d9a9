"""`trustForwardedClientCert`: behind its own Istio sidecar, asm-proxy takes the caller's
SPIFFE ID from the x-forwarded-client-cert that sidecar sets (over real gRPC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asm_proxy.testing import messages
from asm_proxy.wire import process_stub
from tests.support.background import ServerThread

CONFIG = """
trustForwardedClientCert: {trust}
plugins:
  - name: shop-only
    type: headers
    selector: {{namespace: shop}}
    config: {{request: {{set: {{x-tenant: shop}}}}}}
"""
XFCC = (
    "By=spiffe://cluster.local/ns/asm-proxy/sa/asm-proxy;Hash=0f;"
    "URI=spiffe://cluster.local/ns/shop/sa/cart"
)


def serve(tmp_path: Path, trust: bool, transport: str) -> ServerThread:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(trust=str(trust).lower()))
    return ServerThread(path, transport=transport)


@pytest.fixture
def trusting(tmp_path: Path, transport: str) -> Iterator[ServerThread]:
    server = serve(tmp_path, True, transport)
    yield server
    server.stop()


def exchange(server: ServerThread, metadata: list[tuple[str, str]], attributes: dict) -> object:
    with grpc.insecure_channel(server.address) as channel:
        msg = messages.request_headers(
            [(":path", "/"), (":method", "GET")], True, attributes=attributes
        )
        (reply,) = list(process_stub(channel)(iter([msg]), metadata=metadata, timeout=10))
        return reply


def set_headers(reply: object) -> dict[str, str]:
    mutation = reply.request_headers.response.header_mutation  # type: ignore[attr-defined]
    return {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}


def test_the_forwarded_identity_selects_the_plugins(trusting: ServerThread) -> None:
    reply = exchange(trusting, [("x-forwarded-client-cert", XFCC)], {})
    assert set_headers(reply) == {"x-tenant": "shop"}


def test_without_the_header_nothing_is_proven(trusting: ServerThread) -> None:
    assert set_headers(exchange(trusting, [], {})) == {}


def test_node_metadata_contradicting_it_is_refused(trusting: ServerThread) -> None:
    reply = exchange(
        trusting,
        [("x-forwarded-client-cert", XFCC)],
        {"xds.node.metadata.NAMESPACE": "billing"},
    )
    assert reply.immediate_response.status.code == 403  # type: ignore[attr-defined]


def test_not_trusted_unless_configured(tmp_path: Path, transport: str) -> None:
    """By default the header is a client's claim like any other, and ignored."""
    server = serve(tmp_path, False, transport)
    try:
        assert set_headers(exchange(server, [("x-forwarded-client-cert", XFCC)], {})) == {}
    finally:
        server.stop()
