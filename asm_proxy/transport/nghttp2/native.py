"""The C extension, or ImportError saying how to get it.

Built by `pip install` from setup.py when a C compiler and libnghttp2's headers are there
(Debian: `apt-get install libnghttp2-dev`; scripts/setup does it), optional otherwise.
"""

from __future__ import annotations

try:
    from asm_proxy.transport.nghttp2._h2 import (
        BAD_MESSAGE,
        CLOSED,
        DATA,
        END,
        GOAWAY,
        MESSAGE,
        NGHTTP2_VERSION,
        PING_ACK,
        REQUEST,
        Session,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "asm-proxy's nghttp2 transport is not built: install a C compiler and libnghttp2's "
        "headers (Debian: apt-get install gcc libnghttp2-dev), then reinstall asm-proxy "
        f"({exc})"
    ) from exc

__all__ = [
    "BAD_MESSAGE",
    "CLOSED",
    "DATA",
    "END",
    "GOAWAY",
    "MESSAGE",
    "NGHTTP2_VERSION",
    "PING_ACK",
    "REQUEST",
    "Session",
]
