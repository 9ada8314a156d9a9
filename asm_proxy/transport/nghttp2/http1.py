"""Plain HTTP/1.1 on the gRPC port: Envoy's ext_authz `http_service`, and `GET /healthz`.

A connection whose first bytes are not HTTP/2's preface is handed here (connection.py
sniffs them). llhttp (httptools) parses; each request is answered in order:

- `PREFIX/original/path` (Envoy's `path_prefix` + the request's path, its method and the
  headers `allowed_headers` lets through, the body with `with_request_body`): an ext_authz
  check. It becomes the exchange a gRPC Check would make and goes through the same
  decision (`authz.judge`: the AUTHN and AUTHZ plugins, identity checks included), so both
  paths allow and deny alike; no protobuf on the way. Allowed: 200, each header the
  plugins changed with its whole new value as a response header (Envoy's
  `allowed_upstream_headers` overwrites the request's with it: `upstream_headers` says
  why), the headers to remove in `x-envoy-auth-headers-to-remove`. Denied: the plugin's
  status, headers and body.
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
import functools
import logging
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools
import orjson

from asm_proxy import authz, faults
from asm_proxy.caller import NOBODY, Caller
from asm_proxy.envoy_headers import decode_value, encode_value
from asm_proxy.exchange import Exchange
from asm_proxy.headers import Headers, adopt, checked_pair, take_ops
from asm_proxy.health import SERVING
from asm_proxy.identity import Workload
from asm_proxy.stats import counters
from asm_proxy.transport.nghttp2.calls import XFCC, caller_of, peer_name

if TYPE_CHECKING:
    from asm_proxy.transport.nghttp2.server import Listener

log = logging.getLogger("asm_proxy.transport.http1")

METADATA_HEADER = "x-asm-proxy-md-"
REMOVE_HEADER = b"x-envoy-auth-headers-to-remove"
#: How Envoy joins an appended value to the one there (RFC 6265 5.4: one cookie line).
_JOINERS = {"cookie": "; "}
#: Every status Python knows, with its phrase; any other goes out with an empty one, which
#: HTTP/1.1 allows (RFC 9112 4: the reason-phrase is optional and clients ignore it).
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


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
    reason = _REASONS.get(status, b"")
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
        self._sans: tuple[str, ...] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            counters.client_faults += 1
            faults.client_fault("HTTP/1.1 request", str(exc), peer_name(self.transport))
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
        prefix = _target_prefix(self.listener.services.state.settings.http_authz_prefix)
        if url.startswith(prefix) and (len(url) == len(prefix) or url[len(prefix)] in b"/?"):
            return await self._check(request, url[len(prefix) :] or b"/")
        if request.method == b"GET" and url == b"/healthz":
            serving = self.listener.services.health.status("") == SERVING
            status = 200 if serving else 503
            body = b"SERVING\n" if serving else b"NOT_SERVING\n"
            return response(status, [], body, request.keep_alive)
        return response(404, [], b"not found\n", request.keep_alive)

    async def _check(self, request: Request, path: bytes) -> bytes:
        services = self.listener.services
        state = services.state
        caller = self._caller(request) if state.settings.proves_peers else NOBODY
        keep_alive = request.keep_alive
        try:
            return await authz.judge(
                state,
                None,
                lambda proven: exchange_of(request, path, proven),
                caller,
                lambda decision: http_answer(decision, keep_alive),
                pseudo_headers=False,  # an HTTP answer cannot rewrite :path
            )
        except Exception as exc:
            # The request was read whole: the connection stays good for the next one.
            faults.internal_fault("ext_authz check over HTTP", exc)
            return response(500, [], b"asm-proxy internal error; see its log\n", keep_alive)

    def _caller(self, request: Request) -> Caller:
        sans = self._sans
        if sans is None:
            sans = self._sans = self.listener.peer_sans(self.transport)
        xfcc = next((value for name, value in request.headers if name == XFCC), None)
        return caller_of(sans, xfcc)


@functools.lru_cache(maxsize=4)
def _target_prefix(http_authz_prefix: str) -> bytes:
    """`httpAuthzPrefix` as a check's request target starts with it. Read from the running
    settings at each request, so a reload that changes it applies to the next check."""
    return http_authz_prefix.rstrip("/").encode()


def exchange_of(request: Request, path: bytes, proven: Workload | None) -> Exchange:
    """The exchange a check asks about, as `authz.exchange_of_check` makes it from a
    CheckRequest: the request's headers (pseudo-headers from its method, path and host)
    and body; the workload is what mTLS or a trusted XFCC proves (HTTP carries no
    context extensions). Values are decoded as the gRPC path decodes Envoy's raw header
    values (UTF-8, any other byte kept by surrogateescape), so a plugin reads the same
    text over both and an answer gives back the bytes it was sent."""
    pairs: dict[str, list[str]] = {
        ":method": [decode_value(request.method)],
        ":path": [decode_value(path)],
    }
    for name, value in request.headers:
        pairs.setdefault(name.decode("latin-1"), []).append(decode_value(value))
    host = pairs.get("host")
    if host:
        pairs[":authority"] = host[:1]
    headers = adopt(pairs, None)
    x = Exchange(headers, peer=proven)
    body = x.request.buffer()
    for chunk in request.body:  # joined once, only if a plugin reads the body
        body.add(chunk)
    # Envoy marks a body cut at max_request_bytes with this header.
    body.complete = headers.get("x-envoy-auth-partial-body") != "true"
    return x


def http_answer(decision: authz.Decision, keep_alive: bool) -> bytes:
    """The HTTP/1.1 answer to a check; raises (ValueError, TypeError) when the decision
    cannot be written: a header name or value that would break the framing, metadata
    JSON cannot hold."""
    metadata = [
        (checked_pair(METADATA_HEADER + key, "")[0].encode(), orjson.dumps(value))
        for key, value in (decision.metadata or {}).items()
    ]
    respond = decision.respond
    if respond is not None:
        headers = [(k.encode(), encode_value(v)) for k, v in authz.denied_headers(respond)]
        if respond.details:
            metadata.append(((METADATA_HEADER + "details").encode(), orjson.dumps(respond.details)))
        return response(respond.status, headers + metadata, respond.body_bytes(), keep_alive)
    assert decision.exchange is not None
    headers = upstream_headers(decision.exchange.request.headers)
    return response(200, headers + metadata, b"", keep_alive)


def upstream_headers(recorded: Headers | None) -> list[tuple[bytes, bytes]]:
    """The plugins' changes to the upstream request, as an allowed answer's headers.

    Envoy's http_service applies a header of the answer by its name alone, as its config
    says for that name (`allowed_upstream_headers`: overwrite,
    `allowed_upstream_headers_to_append`: add a line), never as one answer means it, and
    has no add-if-absent. So each changed header goes as its whole value after the
    plugins' changes, joined as Envoy joins an append: overwriting with it has the effect
    of every set, append and add_if_absent. That needs the values the request already
    had, which Envoy sent with the check (`allowed_headers` lets them through). Removed
    headers go in `x-envoy-auth-headers-to-remove`."""
    if recorded is None:
        return []
    ops = take_ops(recorded)
    # judge(pseudo_headers=False) refused a check whose plugins rewrote a pseudo-header.
    assert not any(name.startswith(":") for name in ops), "pseudo-header rewrite over HTTP"
    headers = []
    removed = []
    for name in ops:
        values = recorded.get_all(name)
        if values:
            joined = _JOINERS.get(name, ",").join(values)
            headers.append((name.encode(), encode_value(joined)))
        else:
            removed.append(name)
    if removed:
        headers.append((REMOVE_HEADER, ",".join(removed).encode()))
    return headers
