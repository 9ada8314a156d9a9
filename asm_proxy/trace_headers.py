"""The trace headers: which they are, whether they decline sampling, and reading that off
the serialized ProcessingRequest.

Tracing has to look at every exchange's trace headers to decide whether to trace it, and
nearly always the answer is no: there are no trace headers, or the caller's trace was not
sampled (behind an Envoy or Istio sampling 1 %, every request carries an unsampled
`traceparent` or `x-b3-sampled: 0`). Walking Envoy's header list in Python to find out
costs ~2 µs an exchange (a wrapper object and a string per header), as much as all the
rest of tracing. `verdict` answers from the message's bytes instead: in C
(asm_proxy/_trace_headers.c, built with the package like the nghttp2 transport, ~0.1 µs)
or, without it, with `bytes.find` here.

Both read only the first field of the message, `request_headers` (field 2 of
ProcessingRequest, which Envoy writes first), so a string in metadata or attributes is
never taken for a header, and both answer OTHER for anything they do not read exactly (a
header given twice, an unexpected layout, a value that needs stripping): the caller then
decodes the headers and asks `parent_declined`. They can make the common case cheap, never
give a different answer (tests/unit/test_trace_headers.py holds them to that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from asm_proxy.envoy_headers import decode_value

if TYPE_CHECKING:
    from asm_proxy.direction import Direction

#: The headers trace context travels in (W3C, B3 multi and single).
TRACE_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    }
)

#: What `verdict` answers: no header a parent is read from; a parent that declined
#: sampling; anything else (decode the headers and decide).
NONE, DECLINED, OTHER = 0, 1, 2


def trace_headers(d: Direction) -> dict[str, str]:
    """The trace headers of one side, without decoding the others (a plugin that only sets
    headers never has Envoy's header map decoded; tracing must not make it)."""
    headers = d.headers
    if headers is not None:
        if TRACE_HEADERS.isdisjoint(headers.keys()):  # the common case, in one C call
            return {}
        return {k: v for k in TRACE_HEADERS if (v := headers.get(k)) is not None}
    raw = d.raw_headers
    found: dict[str, str] = {}
    if raw is not None:
        for h in raw.headers:
            key = h.key
            if key in TRACE_HEADERS:
                found[key] = decode_value(h.raw_value) if h.raw_value else h.value
    return found


_HEX = "0123456789abcdef"


def _hex(text: str, length: int) -> bool:
    """`length` lower-case hex digits, not all zero (W3C and B3 ids)."""
    return len(text) == length and not text.strip(_HEX) and bool(text.strip("0"))


def parent_declined(carrier: dict[str, str]) -> bool:
    """True only when the trace headers name a valid parent that was not sampled, as the
    default propagators would read them (traceparent before b3 before x-b3-*). Anything
    else (sampled, malformed, unusual) is False: the propagators and the sampler decide."""
    parent = carrier.get("traceparent")
    if parent is not None:
        parts = parent.strip().split("-")
        return (
            len(parts) == 4
            and parts[0] == "00"
            and _hex(parts[1], 32)
            and _hex(parts[2], 16)
            and len(parts[3]) == 2
            and not parts[3].lower().strip(_HEX)
            and not int(parts[3], 16) & 1
        )
    single = carrier.get("b3")
    if single is not None:
        fields = single.strip().split("-")
        return (
            len(fields) in (3, 4)
            and _hex(fields[0], len(fields[0]))
            and len(fields[0]) in (16, 32)
            and _hex(fields[1], 16)
            and fields[2] == "0"
        )
    trace_id, span_id = carrier.get("x-b3-traceid", ""), carrier.get("x-b3-spanid", "")
    return (
        len(trace_id) in (16, 32)
        and _hex(trace_id, len(trace_id))
        and _hex(span_id, 16)
        and carrier.get("x-b3-sampled") in ("0", "false")
        and carrier.get("x-b3-flags") != "1"
    )


# -- reading the bytes, in Python ------------------------------------------------------------

_REQUEST_HEADERS_TAG = 0x12  # ProcessingRequest.request_headers: field 2, length-delimited
_HEADER_VALUE_TAG = 0x0A  # HeaderMap.headers: field 1, length-delimited
_VALUE_TAG = 0x12  # HeaderValue.value: field 2 (string)
_RAW_VALUE_TAG = 0x1A  # HeaderValue.raw_value: field 3 (bytes)


def _key(name: str) -> tuple[str, bytes]:
    """A header's HeaderValue.key on the wire: tag 1, its length (< 128), the name."""
    return name, bytes((0x0A, len(name))) + name.encode()


_TRACEPARENT = _key("traceparent")
_B3 = tuple(_key(n) for n in ("b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"))


class _Unclear(Exception):
    """The bytes around a match are not the layout read here."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _Unclear


def _header_value(data: bytes, key: bytes, end: int) -> str | None:
    """The value of the one header whose HeaderValue key is `key`, None if there is none.
    Raises _Unclear for a match that is not a whole HeaderValue, or a repeated header."""
    at = data.find(key, 0, end)
    if at < 0:
        return None
    if data.find(key, at + 1, end) >= 0:
        raise _Unclear  # a header given twice: which one a propagator reads is its business
    # Before the key: the HeaderValue's length (a varint: high bit set on all bytes but
    # its last), and before that HeaderMap's tag.
    start = at - 1
    if start < 1 or data[start] & 0x80:
        raise _Unclear
    while start > 0 and data[start - 1] & 0x80:
        start -= 1
    if start < 1 or data[start - 1] != _HEADER_VALUE_TAG:
        raise _Unclear
    length, first = _varint(data, start, at)
    stop = at + length
    if first != at or stop > end:
        raise _Unclear
    pos = at + len(key)
    text = raw = b""
    while pos < stop:
        tag = data[pos]
        size, pos = _varint(data, pos + 1, stop)
        if pos + size > stop or tag not in (_VALUE_TAG, _RAW_VALUE_TAG):
            raise _Unclear
        if tag == _RAW_VALUE_TAG:
            raw = data[pos : pos + size]
        else:
            text = data[pos : pos + size]
        pos += size
    return decode_value(raw or text)  # raw_value if set, else value: as decoded


def _found(data: bytes) -> dict[str, str]:
    """The headers a parent is read from, found in the request headers of `data`."""
    if not data or data[0] != _REQUEST_HEADERS_TAG:
        raise _Unclear  # not a request-headers message (or an unexpected field first)
    length, start = _varint(data, 1, len(data))
    end = start + length
    if end > len(data):
        raise _Unclear
    if data.find(b"trace", start, end) >= 0:
        name, key = _TRACEPARENT
        value = _header_value(data, key, end)
        if value is not None:
            return {name: value}  # it decides alone
    found: dict[str, str] = {}
    if data.find(b"b3", start, end) >= 0:
        for name, key in _B3:
            value = _header_value(data, key, end)
            if value is not None:
                found[name] = value
    return found


def verdict_of_bytes(data: bytes) -> int:
    """NONE, DECLINED or OTHER for the serialized ProcessingRequest `data` (in Python)."""
    try:
        found = _found(data)
    except _Unclear:
        return OTHER
    if not found:
        return NONE
    return DECLINED if parent_declined(found) else OTHER


def _compiled() -> Callable[[bytes], int] | None:
    try:
        from asm_proxy._trace_headers import verdict as compiled
    except ImportError:  # built without a C compiler: the Python reading above
        return None
    return compiled


#: The verdict for a serialized ProcessingRequest: the C one when built, else Python's.
verdict: Callable[[bytes], int] = _compiled() or verdict_of_bytes
