"""Listening sockets the supervisor owns and its workers accept on (nghttp2 transport).

grpc.aio binds its own sockets, so a worker that dies takes its listening socket with it:
on a Unix socket the path refuses connections until the replacement has started and taken
it over (asm_proxy/unix_sockets.py; Envoy gets "connection refused" meanwhile), and on a
shared TCP port the connections queued on the dead worker's SO_REUSEPORT socket are reset.
A transport that accepts on an inherited socket (`Transport.start(sock=...)`) closes that
gap: the supervisor makes one listening socket per worker index and keeps it for the life
of the server; a worker's replacement (after a crash or a recycle) inherits the same
socket, and connections that arrive in between wait in its backlog.

The supervisor holds them on TCP, and on a Unix socket only for a single worker
(`Supervisor._holds_sockets` says why). On SIGTERM it closes them once the workers stop
accepting (after `drainDelay`), so new connections are refused as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from asm_proxy import unix_sockets

#: Connections the kernel queues for a listening socket (while a worker restarts, too).
BACKLOG = 1024


@dataclass
class Listening:
    """A listening socket the supervisor holds, and for a Unix socket the path and inode it
    was put at (removed on close only if it is still this socket)."""

    sock: socket.socket
    path: tuple[Path, int] | None = None

    def fileno(self) -> int:
        return self.sock.fileno()


def unix_listener(address: str, mode: int) -> Listening:
    """A listening Unix socket at `address` (unix:PATH) with permissions `mode`; a path
    something still serves on is refused, a stale one replaced (bound under a private name
    and renamed over it, as a worker does: asm_proxy/unix_sockets.py)."""
    path = unix_sockets.check(address)
    if path.exists() and unix_sockets.in_use(path):
        raise OSError(f"cannot listen on {address}: another server is serving on it")
    private = unix_sockets.private_name(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(private))
        os.chmod(private, mode)
        sock.listen(BACKLOG)
        inode = unix_sockets.take_over(private, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            private.unlink()
        raise OSError(f"cannot listen on {address}: {exc.strerror}") from None
    return Listening(sock, (path, inode))


def tcp_listener(address: str) -> Listening:
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
    return Listening(sock)


def close(listening: list[Listening]) -> None:
    """Stop listening; a Unix socket's path goes too (unless something else has taken it)."""
    for one in listening:
        one.sock.close()
        if one.path is not None:
            unix_sockets.release(*one.path)
    listening.clear()
