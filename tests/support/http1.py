"""A tiny HTTP/1.1 client that can send request trailers and read response trailers
(httpx cannot), and keep one connection for several requests, built on h11."""

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
    reason: bytes = b""


class Connection:
    """One connection to 127.0.0.1:`port`; every read gives up after `timeout` seconds
    (socket.timeout), so a server that never answers fails the test instead of hanging it."""

    def __init__(self, port: int, *, timeout: float = 10) -> None:
        self.port = port
        self._conn = h11.Connection(h11.CLIENT)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        chunks: list[bytes] = (),  # type: ignore[assignment]
        trailers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> Reply:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        has_host = any(k.lower() == "host" for k, _ in headers)
        all_headers = [*([] if has_host else [("host", f"127.0.0.1:{self.port}")]), *headers]
        if chunks or trailers:
            all_headers.append(("transfer-encoding", "chunked"))
        out = conn.send(h11.Request(method=method, target=path, headers=all_headers))
        for chunk in chunks:
            out += conn.send(h11.Data(data=chunk))
        out += conn.send(h11.EndOfMessage(headers=list(trailers)))
        self._sock.sendall(out)
        return self._reply()

    def _reply(self) -> Reply:
        reply = Reply(0, {}, b"", {})
        body = bytearray()
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(self._sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                reply.status, reply.reason = event.status_code, bytes(event.reason)
                reply.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                reply.trailers = {k.decode(): v.decode() for k, v in event.headers}
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
        reply.body = bytes(body)
        return reply

    def closed_by_server(self) -> bool:
        """Whether the server has closed its side (a read returns end of file at once);
        False if it is still open and sends nothing within the timeout."""
        try:
            return self._sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """One request on a connection of its own."""
    with Connection(port, timeout=timeout) as conn:
        return conn.request(method, path, headers=headers, chunks=chunks, trailers=trailers)
