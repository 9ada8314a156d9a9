"""Host names and authorities: helpers plugins share (exported by asm_proxy.api)."""

from __future__ import annotations

import re

_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def split_host_port(authority: str) -> tuple[str, str | None]:
    """("example.com", "8080") from "example.com:8080"; IPv6 literals keep their brackets off."""
    if authority.startswith("["):
        end = authority.find("]")
        if end > 0:
            rest = authority[end + 1 :]
            return authority[1:end], rest[1:] if rest.startswith(":") else None
        return authority, None
    head, sep, port = authority.rpartition(":")
    if sep and head and port.isdigit() and ":" not in head:
        return head, port
    return authority, None


def normalize_host(name: str) -> str | None:
    """`name` lower-cased without its trailing dot, or None if it is not a DNS host name
    (dot-separated labels of letters, digits, '-' and '_')."""
    host = name.strip().rstrip(".").lower()
    if not host or len(host) > 253:
        return None
    if not all(_HOST_LABEL.match(label) for label in host.split(".")):
        return None
    return host
