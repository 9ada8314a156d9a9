"""A tiny HTTP/1.1 client that can send request trailers and read response trailers
(httpx cannot), built on h11."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import h11


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    trailers: dict[str, str]


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    chunks: list[bytes] = (),  # type: ignore[assignment]
    trailers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    timeout: float = 10,
) -> Reply:
    conn = h11.Connection(h11.CLIENT)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        has_host = any(k.lower() == "host" for k, _ in headers)
        all_headers = [*([] if has_host else [("host", f"127.0.0.1:{port}")]), *headers]
        if chunks or trailers:
            all_headers.append(("transfer-encoding", "chunked"))
        out = conn.send(h11.Request(method=method, target=path, headers=all_headers))
        for chunk in chunks:
            out += conn.send(h11.Data(data=chunk))
        out += conn.send(h11.EndOfMessage(headers=list(trailers)))
        sock.sendall(out)
        status = 0
        resp_headers: dict[str, str] = {}
        body = bytearray()
        resp_trailers: dict[str, str] = {}
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                resp_trailers = {k.decode(): v.decode() for k, v in event.headers}
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
        return Reply(status, resp_headers, bytes(body), resp_trailers)
    finally:
        sock.close()
