"""A small HTTP/1.1 upstream that echoes what it received, for the demo and the tests.

By default it answers with JSON describing the request it saw (method, path, headers, body,
trailers), so a curl through Envoy shows what the plugins changed. Request headers steer it:

    x-echo-status: 404              answer with this status
    x-echo-body: text               answer with this body instead of the JSON
    x-echo-body-bytes: 1048576      answer with this many bytes (a repeating pattern)
    x-echo-raw-body: 1              answer with the request body, byte for byte
    x-echo-content-type: a/b        content-type of the answer
    x-echo-chunked: 1               chunked transfer encoding (no content-length)
    x-echo-trailer: k=v[, k2=v2]    send response trailers (implies chunked)

Every request is also kept in `requests` (raw bytes included) for tests to inspect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import h11
import orjson

log = logging.getLogger("asm_proxy.upstream")

_CHUNK = 16 * 1024


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def _pattern(size: int) -> bytes:
    unit = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (unit * (size // len(unit) + 1))[:size]


class EchoUpstream:
    def __init__(self, name: str = "upstream", *, keep: int = 1000) -> None:
        self.name = name
        self.requests: list[SeenRequest] = []
        self._keep = keep
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                seen = await self._read_request(conn, reader)
                if seen is None:
                    return
                self.requests.append(seen)
                del self.requests[: -self._keep]
                for data in self._respond(conn, seen):
                    writer.write(data)
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception:
            log.exception("upstream failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> SeenRequest | None:
        request: h11.Request | None = None
        body = bytearray()
        trailers: list[tuple[str, str]] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                trailers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
                break
            elif isinstance(event, h11.ConnectionClosed):
                return None
        assert request is not None
        return SeenRequest(
            method=request.method.decode(),
            target=request.target.decode("latin-1"),
            headers=[
                (k.decode(), v.decode("utf-8", "surrogateescape")) for k, v in request.headers
            ],
            body=bytes(body),
            trailers=trailers,
        )

    def _respond(self, conn: h11.Connection, seen: SeenRequest) -> list[bytes]:
        status = int(seen.header("x-echo-status") or 200)
        content_type = seen.header("x-echo-content-type")
        if seen.header("x-echo-raw-body"):
            body = seen.body
            content_type = content_type or seen.header("content-type") or "application/octet-stream"
        elif seen.header("x-echo-body") is not None:
            body = (seen.header("x-echo-body") or "").encode("utf-8", "surrogateescape")
            content_type = content_type or "text/plain"
        elif seen.header("x-echo-body-bytes"):
            body = _pattern(int(seen.header("x-echo-body-bytes") or 0))
            content_type = content_type or "application/octet-stream"
        else:
            body = self._describe(seen)
            content_type = content_type or "application/json"
        trailer_spec = seen.header("x-echo-trailer")
        chunked = bool(seen.header("x-echo-chunked") or trailer_spec)
        headers = [("content-type", content_type), ("x-upstream", self.name)]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            headers.append(("content-length", str(len(body))))
        out = [conn.send(h11.Response(status_code=status, headers=headers))]
        if seen.method != "HEAD" and status not in (204, 304):
            if chunked:
                for i in range(0, len(body), _CHUNK):
                    out.append(conn.send(h11.Data(data=body[i : i + _CHUNK])))
            elif body:
                out.append(conn.send(h11.Data(data=body)))
        trailers = []
        if trailer_spec:
            for item in trailer_spec.split(","):
                key, _, value = item.strip().partition("=")
                trailers.append((key.strip(), value.strip()))
        out.append(conn.send(h11.EndOfMessage(headers=trailers)))
        return [b for b in out if b]

    def _describe(self, seen: SeenRequest) -> bytes:
        doc: dict[str, Any] = {
            "upstream": self.name,
            "method": seen.method,
            "path": seen.target,
            "headers": {},
            "body_length": len(seen.body),
            "trailers": dict(seen.trailers),
        }
        for key, value in seen.headers:
            doc["headers"][key] = (
                value if key not in doc["headers"] else doc["headers"][key] + ", " + value
            )
        try:
            doc["body"] = seen.body.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_base64"] = base64.b64encode(seen.body).decode()
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
