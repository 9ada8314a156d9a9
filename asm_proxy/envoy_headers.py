"""Envoy's header maps as plain data: {lower-case name: [values]}, and header values as str.

Header values are decoded with UTF-8 + surrogateescape, so any bytes survive the round trip
unchanged while ordinary text reads as text. Kept apart from `codec` (which builds Envoy's
messages) so that `headers`, which decodes lazily, depends on nothing above it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class _HeaderValue(Protocol):
    key: str
    value: str
    raw_value: bytes


class EnvoyHeaderMap(Protocol):
    """envoy.config.core.v3.HeaderMap, as far as decoding needs it."""

    @property
    def headers(self) -> Iterable[_HeaderValue]: ...


def decode_value(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_value(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def decode_header_map(header_map: EnvoyHeaderMap) -> dict[str, list[str]]:
    """{lower-case name: [values]} from an envoy.config.core.v3.HeaderMap."""
    result: dict[str, list[str]] = {}
    for h in header_map.headers:
        raw = h.raw_value
        value = raw.decode("utf-8", "surrogateescape") if raw else h.value
        key = h.key
        values = result.get(key)
        if values is None:
            result[key] = [value]
        else:
            values.append(value)
    return result
