"""Listening sockets the supervisor owns and its workers accept on (nghttp2 transport).

grpc.aio binds its own sockets, so a worker that dies takes its listening socket with it:
on a Unix socket nothing answers at PATH.i until the replacement binds again (Envoy gets
"connection refused" meanwhile), and on a shared TCP port the connections queued on the
dead worker's SO_REUSEPORT socket are reset. A transport that accepts on an inherited
socket (`Transport.start(sock=...)`) closes that gap: the supervisor makes one listening
socket per worker index and keeps it for the life of the server; a worker's replacement
inherits the same socket, and connections that arrive in between wait in its backlog.

On SIGTERM the supervisor closes them once the workers stop accepting (after
`drainDelay`), so new connections are refused as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

#: Connections the kernel queues for a listening socket (while a worker restarts, too).
BACKLOG = 1024


def unix_listener(address: str, mode: int) -> socket.socket:
    """A listening Unix socket at `address` (unix:PATH) with permissions `mode`; a path
    something still serves on is refused, a stale one replaced."""
    from asm_proxy.server import _prepare_unix_socket  # the same checks as a lone server

    _prepare_unix_socket(address)
    path = address[len("unix:") :]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def tcp_listener(address: str) -> socket.socket:
    """A listening SO_REUSEPORT socket on `address` (HOST:PORT, the port already held by
    the supervisor): one per worker, so the kernel spreads connections as before."""
    host, _, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") else host
    family, _, _, _, sockaddr = socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def close(sockets: list[socket.socket]) -> None:
    """Stop listening; a Unix socket's path goes too."""
    for sock in sockets:
        path = None
        if sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                path = sock.getsockname()
        sock.close()
        if path:
            with contextlib.suppress(OSError):
                Path(path).unlink()
    sockets.clear()
