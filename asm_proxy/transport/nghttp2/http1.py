"""Plain HTTP/1.1 on the gRPC port: Envoy's ext_authz `http_service`, and `GET /healthz`.

A connection whose first bytes are not HTTP/2's preface is handed here (connection.py
sniffs them). llhttp (httptools) parses; each request is answered in order:

- `PREFIX/original/path` (Envoy's `path_prefix` + the request's path, its method and the
  headers `allowed_headers` lets through, the body with `with_request_body`): an ext_authz
  check. It becomes the CheckRequest the gRPC path gets and goes through the same
  decision (`authz.decide`: the AUTHN and AUTHZ plugins, identity checks included), so
  both paths allow and deny alike. Allowed: 200, the headers to add upstream as response
  headers (Envoy's `allowed_upstream_headers` picks them), the headers to remove in
  `x-envoy-auth-headers-to-remove`. Denied: the plugin's status, headers and body.
- `GET /healthz`: 200 while serving, 503 once draining (an HTTP health check for the
  cluster Envoy's http_service calls).
- anything else: 404.

What HTTP cannot carry that gRPC can: Envoy's context extensions, metadata context and the
caller's address are not sent; dynamic metadata comes back only as headers Envoy's
`dynamic_metadata_from_headers` picks (asm-proxy sends each top-level key as
`x-asm-proxy-md-KEY` with its JSON value); a rewrite of `:path` (an API key taken out of
the query) cannot be carried, so such a check is refused (403) rather than let through
with what the plugin meant to remove.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools
import orjson
from google.protobuf import json_format

from asm_proxy import authz
from asm_proxy.caller import Caller
from asm_proxy.health import SERVING
from asm_proxy.stats import counters
from asm_proxy.tls import XFCC_HEADER
from asm_proxy.wire import auth

if TYPE_CHECKING:
    from asm_proxy.transport.nghttp2.server import Listener

log = logging.getLogger("asm_proxy.transport.http1")

METADATA_HEADER = "x-asm-proxy-md-"
REMOVE_HEADER = b"x-envoy-auth-headers-to-remove"
CANNOT_REWRITE = (
    b"forbidden: this check needs a path rewrite, which ext_authz over HTTP cannot make\n"
)
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 503: b"Service Unavailable"}


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True


def response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool
) -> bytes:
    reason = _REASONS.get(status, b"Status")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"content-length: %d" % len(body))
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Http1Connection(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._request: Request | None = None
        self._queue: deque[Request] = deque()
        self._busy = False
        prefix = listener.settings.http_authz_prefix.rstrip("/")
        self._prefix = prefix.encode()
        self._sans: tuple[str, ...] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            log.info("HTTP/1.1 request refused: %s", exc)
            if self.transport is not None:
                self.transport.write(response(400, [], b"bad request\n", False))
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.listener.http1.discard(self)

    def close(self) -> None:
        """The server stops: a request being answered is cut."""
        if self.transport is not None:
            self.transport.close()

    # -- llhttp's callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request()

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._request.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        assert self._request is not None
        self._request.body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        self._queue.append(request)
        if not self._busy:
            self._busy = True
            self.loop.create_task(self._serve())

    # -- answering ---------------------------------------------------------------------

    async def _serve(self) -> None:
        """Requests in the order they came (a client may pipeline)."""
        try:
            while self._queue:
                request = self._queue.popleft()
                answer = await self._answer(request)
                transport = self.transport  # the client may have gone meanwhile
                if transport is None:
                    return
                transport.write(answer)
                if not request.keep_alive:
                    transport.close()
                    return
        finally:
            self._busy = False

    async def _answer(self, request: Request) -> bytes:
        url = request.url
        prefix = self._prefix
        if url.startswith(prefix) and (len(url) == len(prefix) or url[len(prefix)] in b"/?"):
            return await self._check(request, url[len(prefix) :] or b"/")
        if request.method == b"GET" and url == b"/healthz":
            serving = self.listener.services.health.status("") == SERVING
            status = 200 if serving else 503
            return response(status, [], b"SERVING\n" if serving else b"NOT_SERVING\n", True)
        return response(404, [], b"not found\n", request.keep_alive)

    async def _check(self, request: Request, path: bytes) -> bytes:
        check = check_request(request, path)
        services = self.listener.services
        settings = services.state.settings
        caller = self._caller(request) if settings.proves_peers else Caller()
        try:
            answer = await authz.decide(services.state, check, caller)
        except Exception:
            log.exception("ext_authz check over HTTP failed inside asm-proxy")
            counters.streams_aborted += 1
            return response(500, [], b"asm-proxy internal error; see its log\n", False)
        return http_answer(answer, request.keep_alive)

    def _caller(self, request: Request) -> Caller:
        sans = self._sans
        if sans is None:
            sans = self._sans = self.listener.peer_sans(self.transport)
        xfcc = next((v for k, v in request.headers if k == XFCC_HEADER.encode()), None)
        return Caller(sans=sans, xfcc=xfcc.decode("latin-1") if xfcc is not None else None)


def check_request(request: Request, path: bytes) -> auth.CheckRequest:
    """The CheckRequest Envoy's gRPC client would have sent for what its HTTP client sent."""
    check = auth.CheckRequest()
    http = check.attributes.request.http
    http.method = request.method.decode("latin-1")
    http.path = path.decode("latin-1")
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    host = headers.get("host")
    if host is not None:
        http.host = host
    http.headers.update(headers)
    if request.body:
        http.raw_body = b"".join(request.body)
    return check


def http_answer(answer: auth.CheckResponse, keep_alive: bool) -> bytes:
    metadata: list[tuple[bytes, bytes]] = []
    if answer.HasField("dynamic_metadata"):
        values: dict[str, Any] = json_format.MessageToDict(answer.dynamic_metadata)
        for key, value in values.items():
            metadata.append(((METADATA_HEADER + key).encode(), orjson.dumps(value)))
    if answer.HasField("denied_response"):
        denied = answer.denied_response
        status = denied.status.code or 403
        headers = [(o.header.key.encode(), o.header.value.encode()) for o in denied.headers]
        return response(status, headers + metadata, denied.body.encode(), keep_alive)
    ok = answer.ok_response
    headers = [(o.header.key.encode(), o.header.value.encode()) for o in ok.headers]
    if any(name.startswith(b":") for name, _ in headers):
        # A rewrite of :path (an API key taken out of the query): Envoy takes no
        # pseudo-header from an HTTP authorization answer, and letting the request through
        # unchanged would forward what the plugin meant to remove. Fail closed.
        log.warning(
            "ext_authz over HTTP cannot rewrite %s; refused (use gRPC for it)",
            ", ".join(n.decode() for n, _ in headers if n.startswith(b":")),
        )
        return response(403, [], CANNOT_REWRITE, keep_alive)
    if ok.headers_to_remove:
        headers.append((REMOVE_HEADER, ",".join(ok.headers_to_remove).encode()))
    return response(200, headers + metadata, b"", keep_alive)
