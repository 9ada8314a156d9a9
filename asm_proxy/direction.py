"""One side of an exchange, request or response, as the server tracks it.

Like the `ProcessorState` of Envoy's ext_proc filter (one for decoding, one for encoding),
a `Direction` owns where that side's messages have got to (`stage`, `eos`), the body mode
Envoy is in for it, and the side's data: headers (decoded when first read), the body buffer
and the trailers. Plugins see the data through `Request` / `Response` (asm_proxy.exchange);
the stream and the body strategies work on the Direction.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, TypeAlias

from asm_proxy.body import BodyBuffer
from asm_proxy.envoy_headers import EnvoyHeaderMap, decode_header_map
from asm_proxy.events import Event, Side
from asm_proxy.headers import HeaderOp, Headers, adopt, from_envoy, take_ops
from asm_proxy.undo import UndoLog
from asm_proxy.wire import ProcessingMode

BodyMode: TypeAlias = ProcessingMode.BodySendMode.ValueType


class Stage(enum.IntEnum):
    """How far a side has got; messages must come in this order."""

    NOTHING = 0
    HEADERS = 1
    BODY = 2
    TRAILERS = 3


class SideEvents(NamedTuple):
    """The events of one side, looked up once instead of per message."""

    headers: Event
    body: Event
    chunk: Event
    trailers: Event


REQUEST_SIDE = SideEvents(
    Event.REQUEST_HEADERS, Event.REQUEST_BODY, Event.REQUEST_BODY_CHUNK, Event.REQUEST_TRAILERS
)
RESPONSE_SIDE = SideEvents(
    Event.RESPONSE_HEADERS, Event.RESPONSE_BODY, Event.RESPONSE_BODY_CHUNK, Event.RESPONSE_TRAILERS
)


class Direction:
    """The state of one side of an exchange (see the module doc). Defaults are class
    attributes: a new Direction sets three fields, the rest only when they change."""

    stage: Stage = Stage.NOTHING
    eos = False
    #: The body mode Envoy is in for this side (what asm-proxy asked for, or its config).
    mode: BodyMode = ProcessingMode.NONE
    #: The mode is what asm-proxy asked for, not what Envoy said it is configured with:
    #: an Envoy that ignores mode_override would send the body in pieces instead.
    assumed = False
    body_messages = 0
    whole_done = False  # the whole-body hooks have run
    held = False  # FULL_DUPLEX: chunks kept back until the body is complete
    headers: Headers | None = None
    raw_headers: EnvoyHeaderMap | None = None
    body: BodyBuffer | None = None
    trailers: Headers | None = None

    def __init__(self, side: Side, undo: UndoLog) -> None:
        self.side: Side = side
        self.events = REQUEST_SIDE if side == "request" else RESPONSE_SIDE
        self.undo = undo

    def receive_headers(self, header_map: EnvoyHeaderMap) -> None:
        """Take Envoy's HeaderMap as this side's headers (decoded when first read)."""
        self.headers, self.raw_headers = None, header_map

    def headers_view(self) -> Headers:
        headers = self.headers
        if headers is None:
            raw, self.raw_headers = self.raw_headers, None
            undo = self.undo
            headers = Headers(undo=undo) if raw is None else from_envoy(raw, undo)
            self.headers = headers
        return headers

    def take_header_ops(self) -> dict[str, list[HeaderOp]]:
        """The header changes recorded since the last call (none if nobody read them)."""
        headers = self.headers
        return take_ops(headers) if headers is not None else {}

    def buffer(self) -> BodyBuffer:
        body = self.body
        if body is None:
            body = self.body = BodyBuffer()
        return body

    def receive_trailers(self, trailer_map: EnvoyHeaderMap) -> None:
        self.trailers = adopt(decode_header_map(trailer_map), self.undo)

    def take_trailer_ops(self) -> dict[str, list[HeaderOp]]:
        trailers = self.trailers
        return take_ops(trailers) if trailers is not None else {}

    def trailers_view(self) -> Headers:
        trailers = self.trailers
        if trailers is None:
            trailers = self.trailers = Headers(undo=self.undo)
        return trailers

    @property
    def replacement(self) -> bytes | None:
        """The body a plugin set in place of what Envoy sent, if any."""
        body = self.body
        return body.replacement if body is not None else None
