"""Building ProcessingResponses: what the chain decided for one message, as Envoy reads it.

Each function turns the intents plugins left on the exchange (header operations on a side,
metadata, a route-cache clear, a new body) into the one reply of the right kind. A reply
that carries nothing is a prebuilt constant; header mutations are cached in `codec`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from asm_proxy import codec
from asm_proxy.direction import Direction
from asm_proxy.events import BY_MESSAGE, Event
from asm_proxy.exchange import Exchange
from asm_proxy.headers import ROUTING_HEADERS, HeaderOp
from asm_proxy.plugin import Respond
from asm_proxy.stats import counters
from asm_proxy.wire import ProcessingMode, ProcessingResponse, ext_proc

BodyMode: TypeAlias = ProcessingMode.BodySendMode.ValueType
HeaderMode: TypeAlias = ProcessingMode.HeaderSendMode.ValueType
#: A ProcessingMode as a hashable key: (request body, request trailers, response headers,
#: response body, response trailers).
ModeKey: TypeAlias = tuple[BodyMode, HeaderMode, HeaderMode, BodyMode, HeaderMode]
#: What a message gets: one reply, several (held FULL_DUPLEX chunks), or none.
Reply: TypeAlias = ProcessingResponse | list[ProcessingResponse] | None


def _empty(event: Event) -> ProcessingResponse:
    reply = ProcessingResponse()
    getattr(reply, event.key).SetInParent()
    return reply


#: "Carry on unchanged", one per message kind.
CONTINUE: dict[Event, ProcessingResponse] = {event: _empty(event) for event in BY_MESSAGE.values()}
_MODES: dict[ModeKey, ProcessingMode] = {}
_CONTINUE_WITH_MODE: dict[tuple[Event, ModeKey], ProcessingResponse] = {}


def mode_message(key: ModeKey) -> ProcessingMode:
    mode = _MODES.get(key)
    if mode is None:
        mode = _MODES[key] = ProcessingMode(
            request_body_mode=key[0],
            request_trailer_mode=key[1],
            response_header_mode=key[2],
            response_body_mode=key[3],
            response_trailer_mode=key[4],
        )
    return mode


def _continue_with_mode(event: Event, key: ModeKey) -> ProcessingResponse:
    cached = _CONTINUE_WITH_MODE.get((event, key))
    if cached is None:
        cached = _empty(event)
        cached.mode_override.CopyFrom(mode_message(key))
        _CONTINUE_WITH_MODE[(event, key)] = cached
    return cached


def _common(
    common: ext_proc.CommonResponse, event: Event, ops: dict[str, list[HeaderOp]], route: bool
) -> None:
    """Fill a CommonResponse with the header changes and a route-cache clear."""
    if ops:
        common.header_mutation.CopyFrom(codec.header_mutation(ops))
        if event.is_request and not route and not ROUTING_HEADERS.isdisjoint(ops):
            route = True
    if route and event.is_request:
        # Envoy only clears the route cache when the response carries a header mutation.
        common.header_mutation.SetInParent()
        common.clear_route_cache = True


def _put_metadata(
    reply: ProcessingResponse, metadata: dict[str | None, dict[str, Any]], namespace: str
) -> None:
    reply.dynamic_metadata.CopyFrom(codec.dynamic_metadata(metadata, namespace))


def headers(
    x: Exchange,
    d: Direction,
    event: Event,
    namespace: str,
    *,
    mode: ModeKey | None,
    body: bytes | None = None,
) -> ProcessingResponse:
    """The answer to a headers message; `body` adds a body to a message that had none."""
    ops = d.take_header_ops()
    metadata = x.take_metadata()
    route = x.take_route_cache()
    counters.responses += 1
    if not ops and not metadata and not route and body is None:
        return CONTINUE[event] if mode is None else _continue_with_mode(event, mode)
    reply = _empty(event)
    common = getattr(reply, event.key).response
    _common(common, event, ops, route)
    if body is not None:
        # A body for a message that had none: CONTINUE_AND_REPLACE adds it.
        common.status = ext_proc.CommonResponse.CONTINUE_AND_REPLACE
        common.body_mutation.body = body
        counters.bodies_replaced += 1
        counters.body_bytes_sent += len(body)
    if mode is not None:
        reply.mode_override.CopyFrom(mode_message(mode))
    if metadata:
        _put_metadata(reply, metadata, namespace)
    return reply


def body(
    x: Exchange, d: Direction, event: Event, namespace: str, new_body: bytes | None
) -> ProcessingResponse:
    """The answer to a body message (BUFFERED or STREAMED): header changes, and the body or
    chunk to send instead of what Envoy has, if any."""
    ops = d.take_header_ops()
    metadata = x.take_metadata()
    route = x.take_route_cache()
    counters.responses += 1
    if not ops and not metadata and not route and new_body is None:
        return CONTINUE[event]
    reply = _empty(event)
    common = getattr(reply, event.key).response
    _common(common, event, ops, route)
    if new_body is not None:
        counters.bodies_replaced += 1
        counters.body_bytes_sent += len(new_body)
        if new_body:
            common.body_mutation.body = new_body
        else:
            common.body_mutation.clear_body = True
    if metadata:
        _put_metadata(reply, metadata, namespace)
    return reply


def streamed(
    x: Exchange, event: Event, namespace: str, data: bytes, eos: bool
) -> ProcessingResponse:
    """One FULL_DUPLEX_STREAMED body chunk, with any dynamic metadata set so far."""
    counters.responses += 1
    counters.body_bytes_sent += len(data)
    reply = ProcessingResponse()
    mutation = getattr(reply, event.key).response.body_mutation
    mutation.streamed_response.body = data
    mutation.streamed_response.end_of_stream = eos
    metadata = x.take_metadata()
    if metadata:
        _put_metadata(reply, metadata, namespace)
    return reply


def held(
    x: Exchange, d: Direction, event: Event, namespace: str, *, eos: bool
) -> list[ProcessingResponse]:
    """FULL_DUPLEX_STREAMED chunks held until the body was complete: the replacement, or
    the chunks as received."""
    buffer = d.buffer()
    replacement = buffer.replacement
    if replacement is not None:
        counters.bodies_replaced += 1
        parts: list[bytes] = [replacement]
    else:
        parts = list(buffer.chunks) or [b""]
    last = len(parts) - 1
    return [streamed(x, event, namespace, part, eos and i == last) for i, part in enumerate(parts)]


def trailers(x: Exchange, d: Direction, event: Event, namespace: str) -> ProcessingResponse:
    """The answer to a trailers message: the trailer changes."""
    ops = d.take_trailer_ops()
    metadata = x.take_metadata()
    counters.responses += 1
    if not ops and not metadata:
        return CONTINUE[event]
    reply = ProcessingResponse()
    trailers_response = getattr(reply, event.key)
    if ops:
        trailers_response.header_mutation.CopyFrom(codec.header_mutation(ops))
    else:
        trailers_response.SetInParent()
    if metadata:
        _put_metadata(reply, metadata, namespace)
    return reply


def immediate(x: Exchange, respond: Respond, namespace: str) -> ProcessingResponse:
    """Answer the client now, with any metadata plugins set on the way."""
    counters.immediate_responses += 1
    counters.responses += 1
    x.immediate_status = respond.status
    reply = ProcessingResponse(immediate_response=codec.immediate_response(respond))
    metadata = x.take_metadata()
    if metadata:
        _put_metadata(reply, metadata, namespace)
    return reply
