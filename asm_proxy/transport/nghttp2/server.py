"""Listening and stopping: the nghttp2 transport's `Transport` (see the package doc)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from asm_proxy.transport.nghttp2.connection import H2Connection
from asm_proxy.transport.nghttp2.http1 import Http1Connection
from asm_proxy.transport.nghttp2.tls import ServerTls

if TYPE_CHECKING:
    from asm_proxy.config import ServerSettings
    from asm_proxy.services import Services
    from asm_proxy.tls import CertificateFiles

#: Pending connections the kernel keeps for a listening socket.
BACKLOG = 1024


class Listener:
    """What the connections of one transport share."""

    def __init__(self, services: Services, settings: ServerSettings, tls: ServerTls | None) -> None:
        self.services = services
        self.settings = settings
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.connections: set[H2Connection] = set()
        self.http1: set[Http1Connection] = set()
        self.stopping = False

    def peer_sans(self, transport: asyncio.BaseTransport | None) -> tuple[str, ...]:
        if self.tls is None or transport is None:
            return ()
        return self.tls.peer_sans(transport)


class Nghttp2Transport:
    name = "nghttp2"

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._listener: Listener | None = None
        self._stopped = asyncio.Event()

    async def start(
        self,
        address: str,
        services: Services,
        settings: ServerSettings,
        *,
        reuse_port: bool,
        certificates: CertificateFiles | None,
        sock: socket.socket | None,
    ) -> int:
        loop = asyncio.get_running_loop()
        tls = ServerTls(certificates) if certificates is not None else None
        listener = self._listener = Listener(services, settings, tls)
        ssl = tls.context if tls is not None else None

        def factory() -> H2Connection:
            return H2Connection(listener)

        if sock is not None:
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(factory, sock=sock, ssl=ssl)
            else:
                server = await loop.create_server(factory, sock=sock, ssl=ssl)
        elif address.startswith("unix:"):
            server = await loop.create_unix_server(
                factory, address[len("unix:") :], ssl=ssl, backlog=BACKLOG
            )
        else:
            host, _, port = address.rpartition(":")
            host = host[1:-1] if host.startswith("[") else host
            try:
                server = await loop.create_server(
                    factory,
                    host,
                    int(port),
                    ssl=ssl,
                    reuse_port=reuse_port,
                    backlog=BACKLOG,
                )
            except OSError as exc:
                raise OSError(f"cannot listen on {address}: {exc.strerror} (in use?)") from None
        self._server = server
        if server.sockets and server.sockets[0].family != socket.AF_UNIX:
            return int(server.sockets[0].getsockname()[1])
        return 0

    async def stop(self, grace: float | None) -> None:
        listener, server = self._listener, self._server
        if listener is None or server is None:
            self._stopped.set()
            return
        listener.stopping = True
        server.close()
        for conn in list(listener.connections):
            conn.close_gracefully()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (grace or 0.0)
        while listener.connections and loop.time() < give_up:
            if not any(c.calls for c in listener.connections):
                break
            await asyncio.sleep(0.02)
        for conn in list(listener.connections):
            conn.cut()
        for http1 in list(listener.http1):
            http1.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()
