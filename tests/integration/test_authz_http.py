"""ext_authz over plain HTTP/1.1 (Envoy's http_service, served by the nghttp2 transport):
what the answers say, byte for byte, straight from asm-proxy on one kept connection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import http1
from tests.support.background import ServerThread

CONFIG = """
plugins:
  - {name: gate, type: 'tests.support.plugins:Gate', phase: AUTHN}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    thread = ServerThread(path, transport="nghttp2")
    yield thread
    thread.stop()


def port_of(server: ServerThread) -> int:
    return int(server.address.rpartition(":")[2])


def test_answers_carry_their_reason_phrase(server: ServerThread) -> None:
    """Each status line names its status as HTTP does, denials included."""
    with http1.Connection(port_of(server), timeout=5) as conn:
        allowed = conn.request("GET", "/ext_authz/", headers=[("x-allow", "yes")])
        unknown = conn.request("GET", "/ext_authz/")
        refused = conn.request("GET", "/ext_authz/", headers=[("x-allow", "no")])
        health = conn.request("GET", "/healthz")
        other = conn.request("GET", "/elsewhere")
    assert [(r.status, r.reason) for r in (allowed, unknown, refused, health, other)] == [
        (200, b"OK"),
        (401, b"Unauthorized"),
        (403, b"Forbidden"),
        (200, b"OK"),
        (404, b"Not Found"),
    ]


def test_healthz_honours_connection_close(server: ServerThread) -> None:
    """A health check that asks to close gets an answer saying so, then the close; one
    that does not keeps its connection."""
    with http1.Connection(port_of(server), timeout=5) as conn:
        kept = conn.request("GET", "/healthz")
        assert (kept.status, kept.body) == (200, b"SERVING\n")
        assert "connection" not in kept.headers
        last = conn.request("GET", "/healthz", headers=[("connection", "close")])
        assert (last.status, last.body) == (200, b"SERVING\n")
        assert last.headers["connection"] == "close"
        assert conn.closed_by_server()
