"""One gRPC call on an HTTP/2 stream, as `Services` sees it (`services.MessageStream`).

Messages arrive from the connection's event loop callback (`message`, `end`, `closed`) and
are read by the call's task; answers go straight into the nghttp2 session and the
connection writes them out once per loop iteration. A stream the client reset is not
cancelled in the middle of a plugin's hook: the task finishes what it was doing, and its
next read or write says how the stream ended (the end, when the reset came while it waited
for a message; `StreamReset` when a message was being answered: that answer is lost).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asm_proxy.caller import Caller
from asm_proxy.services import StreamReset, client_fault
from asm_proxy.status import Code, Status
from asm_proxy.tls import XFCC_HEADER

if TYPE_CHECKING:
    from asm_proxy.transport.nghttp2.connection import H2Connection

XFCC = XFCC_HEADER.encode()


def caller_of(sans: tuple[str, ...], xfcc: bytes | None) -> Caller:
    """Who calls, over HTTP/2 or HTTP/1.1: the certificate's SANs and any XFCC header."""
    return Caller(sans=sans, xfcc=xfcc.decode("latin-1") if xfcc is not None else None)


def peer_name(transport: asyncio.BaseTransport | None) -> str:
    if transport is None:
        return "unknown"
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    if isinstance(peer, str) and peer:
        return f"unix:{peer}"
    return f"unix:{transport.get_extra_info('sockname') or ''}"


class GrpcCall:
    """What every kind of call shares: its connection, its stream, and the one request
    header read (`xfcc`: x-forwarded-client-cert, for the caller's identity)."""

    __slots__ = ("conn", "id", "xfcc")

    def __init__(self, conn: H2Connection, stream_id: int, xfcc: bytes | None) -> None:
        self.conn = conn
        self.id = stream_id
        self.xfcc = xfcc

    def caller(self) -> Caller:
        return caller_of(self.conn.peer_sans(), self.xfcc)

    def peer(self) -> str:
        return self.conn.peer()

    def message(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def closed(self) -> None:
        """The stream is gone (reset by the client, or both sides ended)."""

    def finish(self, status: Status) -> None:
        self.conn.finish(self.id, status)


class StreamCall(GrpcCall):
    """A bidirectional call (ext_proc's Process): the task reads as messages come."""

    __slots__ = ("_ended", "_inbox", "_reset", "_waiter")

    def __init__(self, conn: H2Connection, stream_id: int, xfcc: bytes | None) -> None:
        super().__init__(conn, stream_id, xfcc)
        self._inbox: deque[bytes] = deque()
        self._waiter: asyncio.Future[bytes | None] | None = None
        self._ended = False
        self._reset = False

    def message(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(data)
                return
        self._inbox.append(data)

    def end(self) -> None:
        self._ended = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def closed(self) -> None:
        if self._waiter is None:
            # Not waiting for a message: one is being answered (or was never read), and its
            # answer cannot arrive. (Closed after the call has ended, nothing reads this.)
            self._reset = True
        self.end()

    async def read(self) -> bytes | None:
        if self._reset:
            raise StreamReset
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
        if self._ended:
            return None
        waiter: asyncio.Future[bytes | None] = self.conn.loop.create_future()
        self._waiter = waiter
        return await waiter

    async def write(self, message: bytes) -> None:
        if self._reset:
            raise StreamReset
        conn = self.conn
        if conn.session.send_message(self.id, message):
            conn.want_flush()


UnaryHandler = Callable[[bytes, GrpcCall], Awaitable[bytes | Status]]

_ONE_REQUEST = Status(Code.INVALID_ARGUMENT, "a unary call takes exactly one request message")


class UnaryCall(GrpcCall):
    """A unary call (ext_authz Check, health Check): answered once the request is whole."""

    __slots__ = ("_count", "_handler", "_request")

    def __init__(
        self, conn: H2Connection, stream_id: int, xfcc: bytes | None, handler: UnaryHandler
    ) -> None:
        super().__init__(conn, stream_id, xfcc)
        self._handler = handler
        self._request: bytes | None = None
        self._count = 0

    def message(self, data: bytes) -> None:
        self._count += 1
        self._request = data

    def end(self) -> None:
        request = self._request
        if request is None or self._count != 1:
            self.finish(client_fault("unary gRPC call", _ONE_REQUEST, self.peer()))
            return
        self._request = None
        self.conn.spawn(self._answer(request))

    async def _answer(self, request: bytes) -> None:
        answer = await self._handler(request, self)
        conn = self.conn
        if isinstance(answer, Status):
            conn.finish(self.id, answer)
        elif conn.session.send_message(self.id, answer):
            conn.finish(self.id, _OK)


_OK = Status(Code.OK)


class WatchCall(GrpcCall):
    """A server-streaming call (health Watch): answers until the client goes away."""

    __slots__ = ("_request", "_task")

    def __init__(self, conn: H2Connection, stream_id: int, xfcc: bytes | None) -> None:
        super().__init__(conn, stream_id, xfcc)
        self._request = b""
        self._task: asyncio.Task[None] | None = None

    def message(self, data: bytes) -> None:
        self._request = data

    def end(self) -> None:
        self._task = self.conn.spawn(self._watch())

    def closed(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        conn = self.conn
        async for answer in conn.services.health.watch(self._request):
            if not conn.session.send_message(self.id, answer):
                return
            conn.want_flush()
