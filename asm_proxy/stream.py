"""One ext_proc stream = one HTTP exchange: ProcessingRequests in, ProcessingResponses out.

Dispatch is a table on the `request` oneof, built from `Event`. Each message gets exactly
one response of the matching kind (none in observability mode; in FULL_DUPLEX_STREAMED body
chunks may be held and answered later, as that mode allows). A message that is unknown or
out of order is a `ProtocolError`: the transport ends the stream with a gRPC status naming
the problem (`status.Code`: no gRPC library is involved here).

The stream checks the order of messages per side (`Direction`), runs the headers and
trailers hooks itself, and hands bodies to the strategy for the mode Envoy is in
(`bodies`); replies are built by `replies`, the phases to ask for by `modes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asm_proxy import bodies, codec, modes, observe, replies
from asm_proxy.chain import Chain, Plan, run_hooks
from asm_proxy.direction import BodyMode, Direction, Stage
from asm_proxy.events import BY_MESSAGE, REQUEST_HEADERS, Event
from asm_proxy.exchange import Exchange, Http
from asm_proxy.identity import Workload
from asm_proxy.logs import bind_exchange
from asm_proxy.observe import EXT_PROC
from asm_proxy.plugin import Respond
from asm_proxy.replies import CONTINUE, ModeKey, Reply
from asm_proxy.stats import counters, message_kinds
from asm_proxy.status import Code
from asm_proxy.wire import ProcessingRequest, ProcessingResponse, ext_proc

if TYPE_CHECKING:
    from asm_proxy.config import ServerSettings

log = logging.getLogger("asm_proxy.stream")
_identity_log = logging.getLogger("asm_proxy.identity")

# Stage members as constants: reading `Stage.X` through the enum class costs more per call.
_NOTHING, _HEADERS, _BODY, _TRAILERS = Stage.NOTHING, Stage.HEADERS, Stage.BODY, Stage.TRAILERS


class ProtocolError(Exception):
    """Envoy (or a client pretending to be it) broke the protocol; ends the stream."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_warned_override = False


def _warn_override_ignored() -> None:
    global _warned_override
    if not _warned_override:
        _warned_override = True
        log.warning(
            "Envoy sent a body in pieces after being asked for it whole: it ignores "
            "mode_override. Set allow_mode_override: true on the ext_proc filter, or "
            "modeOverride: false in asm-proxy's config."
        )


class Stream:
    """The state of one exchange and the handlers for each kind of message."""

    __slots__ = (
        "_loop",
        "chain",
        "closing",
        "configured",
        "exchange",
        "finished",
        "namespace",
        "observability",
        "overrides",
        "peer",
        "plan",
        "settings",
    )

    def __init__(
        self, chain: Chain, settings: ServerSettings, *, peer: Workload | None = None
    ) -> None:
        self.chain = chain
        #: The caller's identity as the transport proved it (mTLS), if it did.
        self.peer = peer
        self.settings = settings
        self.namespace = settings.metadata_namespace
        self.exchange: Exchange | None = None
        self.plan: Plan | None = None
        self.observability = False
        self.overrides = settings.mode_override
        #: The body modes Envoy's filter is configured with (request, response).
        self.configured: tuple[BodyMode, BodyMode] = (modes.NONE, modes.NONE)
        self.finished = False  # an immediate response was sent
        #: The reply just returned is the last this exchange needs: the server may end the
        #: stream cleanly after sending it, and Envoy carries on without asking again.
        self.closing = False
        self._loop = asyncio.get_running_loop()

    @property
    def http(self) -> Http | None:
        """What plugins see of this exchange (None before the first message)."""
        return self.exchange.http if self.exchange is not None else None

    # -- entry point -------------------------------------------------------------------

    async def handle(self, msg: ProcessingRequest, wire: bytes | None = None) -> Reply:
        """Answer one message. `wire`: the message as it came, if the caller has it (the
        tracer reads trace headers out of it without decoding Envoy's header list)."""
        kind = msg.WhichOneof("request")
        entry = _DISPATCH.get(kind) if kind is not None else None
        if entry is None:
            raise ProtocolError(
                Code.INVALID_ARGUMENT,
                "ProcessingRequest has no known message set (expected one of "
                f"{', '.join(BY_MESSAGE)})",
            )
        handler, event = entry
        counters.messages += 1
        message_kinds[event.key] += 1
        deadline = self._loop.time() + self.settings.deadline
        x = self.exchange
        if x is None:
            x = self._start(msg, event, wire)
        if msg.attributes:
            attributes = msg.attributes
            x.add_attributes(lambda: codec.attributes_of(attributes))
        if msg.HasField("metadata_context"):
            metadata = msg.metadata_context
            x.set_metadata_source(lambda: codec.metadata_of(metadata))
        self.observability = msg.observability_mode
        if self.peer is not None and self.plan is None:
            conflict = x.identity_conflict()
            if conflict is not None:
                return self._refuse_identity(conflict)
        reply = await handler(self, msg, event, x, deadline)
        if self.observability:
            return None
        return reply

    def _start(self, msg: ProcessingRequest, event: Event, wire: bytes | None) -> Exchange:
        if msg.HasField("protocol_config"):
            config = msg.protocol_config
            self.configured = (config.request_body_mode, config.response_body_mode)
            if config.send_body_without_waiting_for_header_response:
                self.overrides = False  # Envoy ignores mode_override then
        if msg.observability_mode:
            self.overrides = False
        x = Exchange(peer=self.peer)
        bind_exchange(x)
        x.request.mode, x.response.mode = self.configured
        if event is REQUEST_HEADERS:
            x.request.receive_headers(msg.request_headers.headers)
        self.exchange = x
        if observe.tracer is not None:
            observe.trace(x, EXT_PROC, wire)
        return x

    def _select(self, x: Exchange) -> Plan:
        plan = self.plan
        if plan is None:
            plan = self.plan = self.chain.select(x)
        return plan

    def _refuse_identity(self, conflict: str) -> Reply:
        """Envoy's node metadata names another workload than its certificate proves: the
        exchange is refused (fail closed) rather than run under either identity."""
        _identity_log.warning("refused: %s", conflict)
        counters.identity_refusals += 1
        reply = self.immediate(
            Respond(403, body="workload identity mismatch\n", details="asm_proxy_identity_mismatch")
        )
        return None if self.observability else reply

    def immediate(self, respond: Respond) -> ProcessingResponse:
        """Answer the client now; nothing more of this exchange is needed."""
        assert self.exchange is not None
        self.finished = True
        self.closing = not self.observability
        return replies.immediate(self.exchange, respond, self.namespace)

    # -- headers -------------------------------------------------------------------------

    async def _request_headers(
        self, msg: ProcessingRequest, event: Event, x: Exchange, deadline: float
    ) -> Reply:
        d = x.request
        _advance(d, _HEADERS, event)
        if self.plan is not None:  # the stream began with another message; take these in
            d.receive_headers(msg.request_headers.headers)
        plan = self._select(x)
        return await self._headers(event, d, plan, msg.request_headers.end_of_stream, deadline)

    async def _response_headers(
        self, msg: ProcessingRequest, event: Event, x: Exchange, deadline: float
    ) -> Reply:
        d = x.response
        _advance(d, _HEADERS, event)
        headers = msg.response_headers
        d.receive_headers(headers.headers)
        plan = self._select(x)
        if not plan.needs.response_headers and not x.done:
            # No plugin of this exchange has a response hook: nothing to run or change.
            if headers.end_of_stream:
                d.eos = True
                d.buffer().complete = True
            counters.responses += 1
            return CONTINUE[event]
        return await self._headers(event, d, plan, headers.end_of_stream, deadline)

    async def _headers(
        self, event: Event, d: Direction, plan: Plan, end_of_stream: bool, deadline: float
    ) -> Reply:
        x = self.exchange
        assert x is not None
        outcome = None
        if end_of_stream:  # no body follows: header hooks can tell from body.complete
            d.eos = True
            d.buffer().complete = True
        hooks = plan.hooks[event]
        if hooks and not self.finished:
            outcome = await run_hooks(hooks, x, (), deadline)
        if end_of_stream:
            whole = plan.hooks[d.events.body]
            if outcome is None and whole and not self.finished:
                d.whole_done = True
                outcome = await run_hooks(whole, x, (), deadline)
        x.undo.commit()
        if outcome is not None:
            return self.immediate(outcome)
        if self.finished:
            return CONTINUE[event]
        mode = self._mode_override(plan, event)
        if mode is not None:
            self.closing = modes.nothing_more(plan, x, event, self.configured)
        body = d.replacement if end_of_stream else None
        return replies.headers(x, d, event, self.namespace, mode=mode, body=body)

    def _mode_override(self, plan: Plan, event: Event) -> ModeKey | None:
        """The ProcessingMode to ask for (as a cache key), or None to leave Envoy's as is."""
        if not self.overrides or self.observability:
            return None
        x = self.exchange
        assert x is not None
        if not event.is_request and not x.done:
            return None  # nothing changed since the request headers' answer
        return modes.override(plan, x, event, self.configured)

    # -- bodies ------------------------------------------------------------------------

    async def _body(
        self, msg: ProcessingRequest, event: Event, x: Exchange, deadline: float
    ) -> Reply:
        d = x.request if event.is_request else x.response
        body_msg: ext_proc.HttpBody = getattr(msg, event.key)
        if d.stage == _TRAILERS or d.eos:
            why = "trailers" if d.stage == _TRAILERS else "end_of_stream"
            raise ProtocolError(
                Code.FAILED_PRECONDITION,
                f"{event.key} received after the {d.side} {why} on this stream",
            )
        d.stage = _BODY
        d.body_messages += 1
        if d.body_messages > 1 and d.mode in modes.ONE_SHOT:
            _warn_override_ignored()
            d.mode = modes.STREAMED
        plan = self._select(x)
        eos = body_msg.end_of_stream
        if eos:
            d.eos = True
        if self.finished:
            return CONTINUE[event]
        strategy = bodies.for_mode(d.mode)
        return await strategy.body(self, x, d, plan, body_msg.body, eos, deadline)

    # -- trailers ----------------------------------------------------------------------

    async def _trailers(
        self, msg: ProcessingRequest, event: Event, x: Exchange, deadline: float
    ) -> Reply:
        d = x.request if event.is_request else x.response
        if d.stage == _TRAILERS:
            raise ProtocolError(
                Code.FAILED_PRECONDITION,
                f"{event.key} received twice on this stream",
            )
        if d.eos:
            raise ProtocolError(
                Code.FAILED_PRECONDITION,
                f"{event.key} received after the {d.side} end_of_stream on this stream",
            )
        d.stage = _TRAILERS
        d.eos = True
        plan = self._select(x)
        d.receive_trailers(getattr(msg, event.key).trailers)
        if self.finished:
            return CONTINUE[event]
        strategy = bodies.for_mode(d.mode)
        before, outcome = await strategy.end_at_trailers(self, x, d, plan, deadline)
        hooks = plan.hooks[event]
        if outcome is None and hooks:
            outcome = await run_hooks(hooks, x, (), deadline)
        x.undo.commit()
        if outcome is not None:
            return self.immediate(outcome)
        reply = replies.trailers(x, d, event, self.namespace)
        if before:
            before.append(reply)
            return before
        return reply


def _advance(d: Direction, stage: Stage, event: Event) -> None:
    """Headers come first on a side, once."""
    if d.stage != _NOTHING:
        raise ProtocolError(
            Code.FAILED_PRECONDITION,
            f"{event.key} received after {d.side} {d.stage.name.lower()} on this stream",
        )
    d.stage = stage


Handler = Callable[[Stream, ProcessingRequest, Event, Exchange, float], Awaitable[Reply]]

_HANDLERS: dict[tuple[bool, str], Handler] = {
    (True, "headers"): Stream._request_headers,
    (False, "headers"): Stream._response_headers,
    (True, "body"): Stream._body,
    (False, "body"): Stream._body,
    (True, "trailers"): Stream._trailers,
    (False, "trailers"): Stream._trailers,
}
#: ProcessingRequest's `request` field -> (handler, event).
_DISPATCH: dict[str, tuple[Handler, Event]] = {
    key: (_HANDLERS[(event.is_request, event.part)], event) for key, event in BY_MESSAGE.items()
}

__all__ = ["ProtocolError", "Stream"]
