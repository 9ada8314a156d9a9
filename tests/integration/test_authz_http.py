"""ext_authz over plain HTTP/1.1 (Envoy's http_service, served by the nghttp2 transport):
through real Envoy next to gRPC, and straight from asm-proxy on one kept connection (what
the answers say, byte for byte)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from asm_proxy import faults
from asm_proxy.envoy_bootstrap import ASM_PROXY_HTTP_CLUSTER, ExtAuthz
from asm_proxy.metrics.serving import families
from asm_proxy.observe import EXT_AUTHZ, StreamEnd
from tests.integration.conftest import StackFactory
from tests.support import http1
from tests.support.background import ServerThread

CONFIG = """
plugins:
  - {name: gate, type: 'tests.support.plugins:Gate', phase: AUTHN}
  - name: bad-metadata
    type: 'tests.support.plugins:BadMetadata'
    phase: AUTHZ
    match: [{paths: [{prefix: /bad-metadata}]}]
  - name: bad-denial
    type: 'tests.support.plugins:BadDenial'
    phase: AUTHZ
    match: [{paths: [{prefix: /bad-header}]}]
  - name: split-denial
    type: 'tests.support.plugins:BadDenial'
    phase: AUTHZ
    config: {value: "a\\r\\nx-injected: 1"}
    match: [{paths: [{prefix: /split-header}]}]
  - name: split-metadata
    type: 'tests.support.plugins:SetMetadata'
    phase: AUTHZ
    config: {values: {"a\\r\\nx-injected": "1"}}
    match: [{paths: [{prefix: /split-metadata}]}]
"""
#: Checks whose answer cannot be built: metadata JSON cannot hold, a header value no
#: encoding can send, a header value that would add a header of its own.
UNBUILDABLE = ["/bad-metadata", "/bad-header", "/split-header"]
#: ...and over HTTP only, a metadata key that would (a header name there).
UNBUILDABLE_OVER_HTTP = [*UNBUILDABLE, "/split-metadata"]
CHECK_ENDS = (StreamEnd.ALLOWED, StreamEnd.DENIED, StreamEnd.INTERNAL_ERROR)


@pytest.fixture
def internal_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh throttle for asm-proxy's own faults: earlier tests' faults cannot have used
    up this period's lines."""
    fresh = faults.Throttle(faults.log, logging.ERROR, "internal errors")
    monkeypatch.setattr(faults, "internal", fresh)


def checks_ended() -> dict[StreamEnd, float]:
    """ext_authz checks so far (the server runs in this process), by how they ended."""
    return {end: families().end_cells[EXT_AUTHZ, end].value for end in CHECK_ENDS}


def grown(before: dict[StreamEnd, float]) -> dict[StreamEnd, float]:
    return {end: value - before[end] for end, value in checks_ended().items()}


def fault_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "failed inside asm-proxy" in r.getMessage()]


@pytest.mark.parametrize("path", UNBUILDABLE)
@pytest.mark.usefixtures("internal_faults")
def test_an_answer_that_cannot_be_built_is_an_internal_error(
    stack: StackFactory, over: ExtAuthz, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The plugins allow (or deny) but the answer cannot be put on the wire: asm-proxy
    answers at once with its own failure (INTERNAL over gRPC, 500 over HTTP: never a wait
    for Envoy's timeout), logs it once with the traceback, counts the check as an internal
    error (not allowed, not denied), and serves on. Envoy denies with status_on_error."""
    s = stack(CONFIG, ext_authz=over, use_ext_proc=False)
    before = checks_ended()
    with caplog.at_level(logging.ERROR, logger=faults.log.name):
        reply = s.get(path, headers={"x-allow": "yes"})
    assert reply.status_code == 403  # Envoy's status_on_error
    assert "x-injected" not in reply.headers
    assert s.envoy.stats("http.ingress.ext_authz.")["http.ingress.ext_authz.error"] == 1
    if over.http_prefix is not None:
        cluster = f"cluster.{ASM_PROXY_HTTP_CLUSTER}."
        stats = s.envoy.stats(cluster)
        assert stats[cluster + "upstream_rq_500"] == 1
        assert stats.get(cluster + "upstream_rq_timeout", 0) == 0
    assert grown(before) == {
        StreamEnd.ALLOWED: 0,
        StreamEnd.DENIED: 0,
        StreamEnd.INTERNAL_ERROR: 1,
    }
    (line,) = fault_lines(caplog)
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert s.get("/", headers={"x-allow": "yes"}).status_code == 200


COPY = """
plugins:
  - {name: copy, type: 'tests.support.plugins:CopyHeader', phase: AUTHZ}
"""
TEXT = "née ✓"  # CopyHeader's own value


@pytest.mark.parametrize(
    ("sent", "utf8"), [(b"Jos\xc3\xa9", True), (b"a\xffb", False)], ids=["utf-8", "not-utf-8"]
)
def test_header_values_read_and_go_back_as_over_grpc(
    stack: StackFactory, over: ExtAuthz, sent: bytes, utf8: bool
) -> None:
    """A plugin reads a header value as the same text over both transports (UTF-8, a byte
    that is not UTF-8 kept as a surrogate); what it sets or answers goes out as UTF-8, and
    the value it copies goes out as the bytes that came in, allowed or denied. The one
    exception is Envoy's: a CheckResponse carries header values as UTF-8 text only (it
    ignores raw_value), so over gRPC a value that is not UTF-8 arrives empty."""
    over = dataclasses.replace(over, upstream_headers=("x-out", "x-out-repr", "x-out-text"))
    s = stack(COPY, ext_authz=over, use_ext_proc=False)
    read = sent.decode("utf-8", "surrogateescape")
    copied = sent if utf8 or over.http_prefix is not None else b""
    echo = {"x-echo-body": "ok"}  # the echo upstream cannot describe a surrogate in JSON
    allowed = s.get("/", headers={"x-in": sent, **echo})
    assert allowed.status_code == 200
    seen = s.seen("a")
    assert seen.header("x-out-repr") == ascii(read)
    assert seen.header("x-out-text") == TEXT
    assert seen.header("x-out") == copied.decode("utf-8", "surrogateescape")
    denied = s.get("/", headers={"x-in": sent, "x-deny": "1"})
    assert denied.status_code == 403
    raw = dict(denied.headers.raw)
    assert raw[b"x-out-repr"] == ascii(read).encode()
    assert raw[b"x-out-text"] == TEXT.encode()
    assert raw[b"x-out"] == copied


OPS = """
plugins:
  - name: ops
    type: 'tests.support.plugins:HeaderOps'
    phase: AUTHZ
    config:
      ops:
        - [append, x-a, appended]
        - [set, x-b, one]
        - [append, x-b, two]
        - [add_if_absent, x-c, added]
        - [add_if_absent, x-d, added]
        - [set, x-e, set]
        - [remove, x-f, '']
        - [append, cookie, b=2]
"""


def test_every_header_action_has_its_effect_upstream(stack: StackFactory, over: ExtAuthz) -> None:
    """Append, set then append, add-if-absent (present and absent), set over two values,
    remove, append to a cookie: the upstream gets the same request over HTTP as over gRPC
    (an append keeps what the client sent, it does not overwrite it)."""
    names = ("x-a", "x-b", "x-c", "x-d", "x-e", "cookie")
    s = stack(OPS, ext_authz=dataclasses.replace(over, upstream_headers=names), use_ext_proc=False)
    sent = [
        ("x-a", "client"),
        ("x-c", "client"),
        ("x-e", "client-1"),
        ("x-e", "client-2"),
        ("x-f", "client"),
        ("cookie", "a=1"),
    ]
    assert s.get("/", headers=sent).status_code == 200
    seen = s.seen("a")
    assert {name: seen.header_values(name) for name in (*names, "x-f")} == {
        "x-a": ["client,appended"],
        "x-b": ["one,two"],
        "x-c": ["client"],
        "x-d": ["added"],
        "x-e": ["set"],
        "cookie": ["a=1; b=2"],
        "x-f": [],
    }


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


@pytest.mark.usefixtures("internal_faults")
def test_an_internal_error_is_answered_and_the_connection_serves_on(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Straight from asm-proxy: each unbuildable answer is a 500 on the same kept
    connection (the reads give up after 5 s, so a missing answer fails rather than
    hangs), and the next check on that connection is answered as usual."""
    with (
        caplog.at_level(logging.ERROR, logger=faults.log.name),
        http1.Connection(port_of(server), timeout=5) as conn,
    ):
        for path in UNBUILDABLE_OVER_HTTP:
            failed = conn.request("GET", "/ext_authz" + path, headers=[("x-allow", "yes")])
            assert (failed.status, failed.reason) == (500, b"Internal Server Error")
            assert "connection" not in failed.headers
            assert "x-injected" not in failed.headers
        allowed = conn.request("GET", "/ext_authz/", headers=[("x-allow", "yes")])
    assert allowed.status == 200
    assert len(fault_lines(caplog)) == len(UNBUILDABLE_OVER_HTTP)


def test_a_reload_moves_the_check_prefix(tmp_path: Path) -> None:
    """httpAuthzPrefix changed by a reload applies to the next check, on a connection
    opened before the reload too; the old prefix is then an unknown path."""
    path = tmp_path / "config.yaml"
    path.write_text("httpAuthzPrefix: /old\nplugins: []\n")
    server = ServerThread(path, transport="nghttp2")
    try:
        with http1.Connection(port_of(server), timeout=5) as conn:
            assert conn.request("GET", "/old/x").status == 200
            path.write_text("httpAuthzPrefix: /new\nplugins: []\n")
            assert server.reload()
            assert conn.request("GET", "/new/x").status == 200
            assert conn.request("GET", "/old/x").status == 404
        assert http1.request(port_of(server), "GET", "/new/x", timeout=5).status == 200
    finally:
        server.stop()
