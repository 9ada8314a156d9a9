"""Mode negotiation: which phases and body modes to ask Envoy for, from what plugins need.

After the request headers the chain knows which plugins apply; `override` turns what they
need into the `mode_override` of the headers reply (only when Envoy lets asm-proxy choose),
and `nothing_more` says when the exchange needs nothing else, so the stream can end early.
"""

from __future__ import annotations

from asm_proxy.chain import Needs, Plan
from asm_proxy.direction import BodyMode
from asm_proxy.events import Event
from asm_proxy.exchange import Exchange
from asm_proxy.plugin import BodyAccess
from asm_proxy.replies import HeaderMode, ModeKey
from asm_proxy.stats import counters
from asm_proxy.wire import ProcessingMode

NONE: BodyMode = ProcessingMode.NONE
STREAMED: BodyMode = ProcessingMode.STREAMED
BUFFERED: BodyMode = ProcessingMode.BUFFERED
BUFFERED_PARTIAL: BodyMode = ProcessingMode.BUFFERED_PARTIAL
FULL_DUPLEX: BodyMode = ProcessingMode.FULL_DUPLEX_STREAMED
SEND: HeaderMode = ProcessingMode.SEND
SKIP: HeaderMode = ProcessingMode.SKIP
#: Modes in which Envoy sends the body in one message.
ONE_SHOT = (BUFFERED, BUFFERED_PARTIAL)
_NO_BODY = BodyAccess.NONE  # enum members read through the class cost more on every call
_WHOLE = BodyAccess.WHOLE
_CHUNKS = BodyAccess.CHUNKS


def body_mode(access: BodyAccess, configured: BodyMode) -> BodyMode:
    """The body mode to ask for, given what plugins need and Envoy's configured mode."""
    if configured == FULL_DUPLEX:
        return FULL_DUPLEX  # Envoy does not switch into or out of full duplex mid-stream
    if access is _WHOLE:
        return configured if configured in ONE_SHOT else BUFFERED
    if access is _CHUNKS:
        return configured if configured != NONE else STREAMED
    return NONE


def override(
    plan: Plan,
    x: Exchange,
    event: Event,
    configured: tuple[BodyMode, BodyMode],
) -> ModeKey:
    """The ProcessingMode to ask for after `event` (a headers message), as a cache key.
    Records on each Direction the body mode it will then be in."""
    needs: Needs = plan.needs_now(x)
    request, response = x.request, x.response
    request_body = request.mode
    request_trailers = SKIP
    if event.is_request:  # the request headers' answer
        request_body = body_mode(needs.request_body, configured[0])
        if not request.eos:
            request.mode = request_body
            request.assumed = request_body != configured[0]
    if needs.request_trailers or request_body == FULL_DUPLEX:
        request_trailers = SEND
    response_body = body_mode(needs.response_body, configured[1])
    response.mode = response_body
    response.assumed = response_body != configured[1]
    response_trailers = SEND if needs.response_trailers or response_body == FULL_DUPLEX else SKIP
    response_headers = SEND if needs.response_headers else SKIP
    counters.mode_overrides += 1
    return (request_body, request_trailers, response_headers, response_body, response_trailers)


def nothing_more(plan: Plan, x: Exchange, event: Event, configured: tuple[BodyMode, ...]) -> bool:
    """Whether, after answering `event` (a headers message), no plugin needs anything more
    of this exchange. Ending the stream then spares Envoy and the server the rest of it
    (the protocol: a stream the server closes cleanly, Envoy carries on without)."""
    if FULL_DUPLEX in configured:
        return False  # chunks may be held or in flight; let Envoy end the stream
    needs = plan.needs_now(x)
    if not x.request.eos and (needs.request_body is not _NO_BODY or needs.request_trailers):
        return False
    if event.is_request and needs.response_headers:
        return False
    return needs.response_body is _NO_BODY and not needs.response_trailers
