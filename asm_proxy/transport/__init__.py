"""Transports: how asm-proxy's services reach Envoy. One seam, several engines.

A transport listens, speaks gRPC (and, for those that can, plain HTTP) and hands each call
to `services.Services` as bytes; how a call ends comes back as a `status.Status`. Nothing
above this package imports a gRPC library.

- `grpcio`: grpc.aio (grpcio's C core). Always available.
- `nghttp2`: asyncio over libnghttp2 through asm-proxy's own C extension; the cheaper one
  per stream (docs/PERFORMANCE.md). Needs the extension built (libnghttp2).

`create(name)` makes one; `available()` says which can run here and why not.
"""

from __future__ import annotations

import logging
import socket
from functools import cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from asm_proxy.config import ServerSettings
    from asm_proxy.services import Services
    from asm_proxy.tls import CertificateFiles

NAMES = ("grpcio", "nghttp2")
#: What `auto` means where it can: the transport that measured cheapest (docs/PERFORMANCE.md).
PREFERRED = "nghttp2"

log = logging.getLogger("asm_proxy.transport")


class TransportUnavailable(RuntimeError):
    """The transport cannot run here (its native part is missing), or refuses a setting."""


class Transport(Protocol):
    name: str

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
        """Serve on `address` (HOST:PORT or unix:PATH) or on the listening socket `sock`
        when given; returns the TCP port (0 for a Unix socket). Raises OSError when it
        cannot listen, TransportUnavailable when it cannot serve these settings."""
        ...

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls (GOAWAY), give those in flight `grace` seconds, then cut them."""
        ...

    async def wait(self) -> None:
        """Return once the transport has stopped."""
        ...


def create(name: str) -> Transport:
    if name == "grpcio":
        from asm_proxy.transport.grpcio import GrpcioTransport

        return GrpcioTransport()
    if name == "nghttp2":
        from asm_proxy.transport.nghttp2.server import Nghttp2Transport

        return Nghttp2Transport()
    raise TransportUnavailable(f"unknown transport {name!r}; use one of {', '.join(NAMES)}")


def resolve(name: str) -> str:
    """The transport `name` stands for: `auto` is nghttp2 where it is built, else grpcio."""
    if name != "auto":
        return name
    why = available()[PREFERRED]
    if why is None:
        return PREFERRED
    _warn_fallback(why)
    return "grpcio"


@cache
def _warn_fallback(why: str) -> None:
    log.warning("transport auto: serving over grpcio, as %s: %s", PREFERRED, why)


def available() -> dict[str, str | None]:
    """Each transport's name -> None if it can run here, else why not."""
    out: dict[str, str | None] = {"grpcio": None}
    try:
        from asm_proxy.transport.nghttp2 import native  # noqa: F401
    except ImportError as exc:
        out["nghttp2"] = f"its C extension is not built ({exc}); see docs/PERFORMANCE.md"
    else:
        out["nghttp2"] = None
    return out
