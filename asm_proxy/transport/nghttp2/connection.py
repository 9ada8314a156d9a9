"""One HTTP/2 connection from Envoy: an asyncio protocol over a `_h2.Session`.

Bytes read go to the session in one call, which returns the connection's events for that
read; each becomes a call to `Services` (calls.py). Answers are queued in the session and
written once per loop iteration (`want_flush`), so many streams' answers share one write.
Graceful close follows gRPC: a GOAWAY announcing the end, a PING to be sure the client saw
it, then the final GOAWAY naming the last stream served; the streams in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from asm_proxy.health import CHECK_METHOD as HEALTH_CHECK
from asm_proxy.health import WATCH_METHOD as HEALTH_WATCH
from asm_proxy.services import Services, client_fault
from asm_proxy.status import Code, Status, encode_message
from asm_proxy.transport.nghttp2.calls import (
    GrpcCall,
    StreamCall,
    UnaryCall,
    WatchCall,
    peer_name,
)
from asm_proxy.transport.nghttp2.http1 import Http1Connection
from asm_proxy.transport.nghttp2.native import (
    BAD_MESSAGE,
    CLOSED,
    DATA,
    END,
    GOAWAY,
    MESSAGE,
    PING_ACK,
    REQUEST,
    Session,
)
from asm_proxy.wire import CHECK_METHOD, PROCESS_METHOD

if TYPE_CHECKING:
    from asm_proxy.transport.nghttp2.server import Listener

log = logging.getLogger("asm_proxy.transport.nghttp2")

_STATUS_MESSAGES: dict[Status, bytes] = {}


def _message(status: Status) -> bytes:
    encoded = _STATUS_MESSAGES.get(status)
    if encoded is None:
        encoded = encode_message(status.message)
        if len(_STATUS_MESSAGES) < 256:
            _STATUS_MESSAGES[status] = encoded
    return encoded


class H2Connection(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.services: Services = listener.services
        self.loop = listener.loop
        settings = listener.settings
        self.session = Session(
            max_concurrent_streams=settings.max_concurrent_streams,
            max_message_bytes=settings.max_message_bytes,
        )
        self.calls: dict[int, GrpcCall] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.transport: asyncio.Transport | None = None
        self._flush_pending = False
        self._sans: tuple[str, ...] | None = None
        self._closing = False
        self._goaway_sent = False
        self._started = False
        self._check = self.services.check
        self._peer: str | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._started and not self._start(data):
            return
        try:
            events = self.session.receive(data)
        except ConnectionError as exc:
            log.info("HTTP/2 connection closed: %s", exc)
            self._write_pending()
            self._abort()
            return
        self._dispatch(events)
        self._write_pending()

    def _dispatch(self, events: list[tuple]) -> None:  # type: ignore[type-arg]
        calls = self.calls
        for event in events:
            kind = event[0]
            if kind == MESSAGE:
                call = calls.get(event[1])
                if call is not None:
                    call.message(event[2])
            elif kind == REQUEST:
                self._request(event[1], event[2], event[3], event[4])
            elif kind == END:
                call = calls.get(event[1])
                if call is not None:
                    call.end()
            elif kind == CLOSED:
                call = calls.pop(event[1], None)
                if call is not None:
                    call.closed()
            elif kind == BAD_MESSAGE:
                call = calls.get(event[1])
                if call is not None:
                    status = Status(Code(event[2]), event[3])
                    client_fault("gRPC call", status, self.peer())
                    call.end()
                    self.finish(event[1], status)
            elif kind == DATA:
                pass  # a body of a request this connection already refused
            elif kind == PING_ACK:
                if self._closing and not self._goaway_sent:
                    self._final_goaway()
            elif kind == GOAWAY:
                pass  # the client opens no more streams; those in flight go on

    def _start(self, data: bytes) -> bool:
        """The first bytes tell HTTP/2 (its preface starts with "PRI ") from HTTP/1.1, which
        goes to http1.py (Envoy's ext_authz http_service); False when handed over."""
        transport = self.transport
        assert transport is not None
        if not data.startswith(_PREFACE[: len(data)]) or not data:
            self.listener.connections.discard(self)
            http1 = Http1Connection(self.listener)
            self.listener.http1.add(http1)
            transport.set_protocol(http1)
            http1.connection_made(transport)
            http1.data_received(data)
            return False
        self._started = True
        transport.write(self.session.pending())  # our SETTINGS
        if self.listener.stopping:
            self.close_gracefully()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.closed()
        self.transport = None

    # -- calls -------------------------------------------------------------------------

    def _request(self, stream_id: int, path: bytes | None, xfcc: bytes | None, grpc: bool) -> None:
        if not grpc:
            self.session.respond(
                stream_id, 415, [(b"content-type", b"text/plain")], b"gRPC only here\n"
            )
            return
        if path == PROCESS:
            call: GrpcCall = StreamCall(self, stream_id, xfcc)
            self.calls[stream_id] = call
            self.spawn(self._process(call))  # type: ignore[arg-type]
        elif path == CHECK:
            self.calls[stream_id] = UnaryCall(self, stream_id, xfcc, self._check)
        elif path == HEALTH:
            self.calls[stream_id] = UnaryCall(self, stream_id, xfcc, self._health)
        elif path == WATCH:
            self.calls[stream_id] = WatchCall(self, stream_id, xfcc)
        else:
            name = (path or b"").decode("latin-1")
            self.finish(stream_id, Status(Code.UNIMPLEMENTED, f"unknown method {name}"))

    async def _process(self, call: StreamCall) -> None:
        status = await self.services.process(call)
        self.finish(call.id, status)

    async def _health(self, request: bytes, call: GrpcCall) -> bytes | Status:
        return self.services.health.check(request)

    def finish(self, stream_id: int, status: Status) -> None:
        if self.session.finish(stream_id, status.code, _message(status)):
            self.want_flush()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def peer(self) -> str:
        """The client's address as grpc writes it, for the log (`ipv4:HOST:PORT`,
        `ipv6:[HOST]:PORT`, `unix:PATH`: a Unix client has no name, so the server's)."""
        if self._peer is None:
            self._peer = peer_name(self.transport)
        return self._peer

    def peer_sans(self) -> tuple[str, ...]:
        """URI SANs of the client certificate this connection's TLS session verified."""
        sans = self._sans
        if sans is None:
            sans = self._sans = self.listener.peer_sans(self.transport)
        return sans

    # -- writing -----------------------------------------------------------------------

    def want_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self._flush_pending = False
        transport = self.transport
        if transport is None:
            return
        try:
            out = self.session.pending()
        except RuntimeError as exc:
            log.warning("HTTP/2 connection failed: %s", exc)
            self._abort()
            return
        if out:
            transport.write(out)
        closed = self.session.take()  # streams our END_STREAM closed
        if closed:
            self._dispatch(closed)
        session = self.session
        done = self._goaway_sent and not self.calls
        if done or not (session.want_read() or session.want_write()):
            transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- closing -----------------------------------------------------------------------

    def close_gracefully(self) -> None:
        """GOAWAY (no new streams after a round trip); streams in flight go on."""
        if self._closing or self.transport is None or not self._started:
            return  # not started: _start says GOAWAY when it starts
        self._closing = True
        self.session.shutdown_notice()
        self.session.ping()
        self._write_pending()
        # A client that never answers the PING gets the final GOAWAY anyway.
        self.loop.call_later(1.0, self._final_goaway)

    def _final_goaway(self) -> None:
        if self._goaway_sent or self.transport is None:
            return
        self._goaway_sent = True
        self.session.goaway()
        self._write_pending()

    def cut(self) -> None:
        """Stop now: the final GOAWAY if not sent yet, and streams still in flight are cut."""
        for task in list(self.tasks):
            task.cancel()
        self._final_goaway()
        self._abort()  # what was written still goes out before the close


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROCESS = PROCESS_METHOD.encode()
CHECK = CHECK_METHOD.encode()
HEALTH = HEALTH_CHECK.encode()
WATCH = HEALTH_WATCH.encode()
