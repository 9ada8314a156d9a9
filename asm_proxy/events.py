"""The hook vocabulary: every event a plugin can handle, named once.

Hook method names (`on_request_headers`), the stream's dispatch on ProcessingRequest's
`request` oneof, the chain's plans and the constant "continue" replies are all derived
from `Event`: a name is written here and nowhere else.

`Event` is an IntEnum so that it hashes as fast as an int where the per-request path looks
hooks up by event.
"""

from __future__ import annotations

import enum
from typing import Literal

Side = Literal["request", "response"]
Part = Literal["headers", "body", "body_chunk", "trailers"]


class Event(enum.IntEnum):
    """One thing that happens to an exchange, in the order Envoy sends them per side."""

    #: "request_headers": the ProcessingRequest / ProcessingResponse field of this event
    #: (for the chunk events, the body message they come from).
    key: str
    #: "on_request_headers": the plugin method that handles it.
    hook: str
    side: Side
    part: Part
    #: Whether the hook also gets the chunk: `on_*_body_chunk(self, http, chunk)`.
    takes_chunk: bool
    is_request: bool

    REQUEST_HEADERS = 0
    REQUEST_BODY = 1
    REQUEST_BODY_CHUNK = 2
    REQUEST_TRAILERS = 3
    RESPONSE_HEADERS = 4
    RESPONSE_BODY = 5
    RESPONSE_BODY_CHUNK = 6
    RESPONSE_TRAILERS = 7


def _describe() -> None:
    for event in Event:
        side, _, part = event.name.lower().partition("_")
        event.side = "request" if side == "request" else "response"
        event.is_request = side == "request"
        event.part = part  # type: ignore[assignment]  # one of Part by construction
        event.takes_chunk = part == "body_chunk"
        event.key = f"{side}_body" if event.takes_chunk else f"{side}_{part}"
        event.hook = f"on_{side}_{part}"


_describe()

# The members as module constants: reading `Event.X` goes through the enum's metaclass and
# costs several times a global lookup, which the per-request path notices.
REQUEST_HEADERS = Event.REQUEST_HEADERS
REQUEST_BODY = Event.REQUEST_BODY
REQUEST_BODY_CHUNK = Event.REQUEST_BODY_CHUNK
REQUEST_TRAILERS = Event.REQUEST_TRAILERS
RESPONSE_HEADERS = Event.RESPONSE_HEADERS
RESPONSE_BODY = Event.RESPONSE_BODY
RESPONSE_BODY_CHUNK = Event.RESPONSE_BODY_CHUNK
RESPONSE_TRAILERS = Event.RESPONSE_TRAILERS

REQUEST_EVENTS = tuple(e for e in Event if e.is_request)
RESPONSE_EVENTS = tuple(e for e in Event if not e.is_request)
#: Hook method name -> event.
BY_HOOK: dict[str, Event] = {e.hook: e for e in Event}
#: The events that are a whole message of their own (not a chunk of one), by message field.
BY_MESSAGE: dict[str, Event] = {e.key: e for e in Event if not e.takes_chunk}


def headers_of(side: Side) -> Event:
    return Event.REQUEST_HEADERS if side == "request" else Event.RESPONSE_HEADERS


def body_of(side: Side) -> Event:
    """The whole-body event of a side."""
    return Event.REQUEST_BODY if side == "request" else Event.RESPONSE_BODY


def chunk_of(side: Side) -> Event:
    """The body-chunk event of a side."""
    return Event.REQUEST_BODY_CHUNK if side == "request" else Event.RESPONSE_BODY_CHUNK


def trailers_of(side: Side) -> Event:
    return Event.REQUEST_TRAILERS if side == "request" else Event.RESPONSE_TRAILERS
