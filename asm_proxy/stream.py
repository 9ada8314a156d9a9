"""One ext_proc stream = one HTTP exchange: ProcessingRequests in, ProcessingResponses out.

Dispatch is a table on the `request` oneof. Each message gets exactly one response of the
matching kind (none in observability mode; in FULL_DUPLEX_STREAMED body chunks may be held
and answered later, as that mode allows). A message that is unknown or out of order is a
`ProtocolError`: the servicer ends the stream with a gRPC status naming the problem.

Body handling follows the mode Envoy is in for each direction:
- BUFFERED / BUFFERED_PARTIAL: one message with the body (a prefix of it past the buffer
  limit in BUFFERED_PARTIAL); chunk hooks then whole-body hooks run; a replacement is sent
  back (with content-length fixed in BUFFERED mode).
- STREAMED: each chunk is answered as it comes; chunk hooks may rewrite it. Whole-body hooks
  can only observe (the chunks have already gone on), and run once the body ends.
- FULL_DUPLEX_STREAMED: chunks are answered with StreamedBodyResponses. With whole-body hooks
  the chunks are held until the body ends, then sent on (replaced or as received).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from asm_proxy import codec
from asm_proxy.body import Body, Chunk
from asm_proxy.chain import Chain, Needs, Plan, run_hooks
from asm_proxy.exchange import ROUTING_HEADERS, Http, Message
from asm_proxy.headers import Headers
from asm_proxy.plugin import BodyAccess, Respond
from asm_proxy.stats import counters
from asm_proxy.wire import BodySendMode, HeaderSendMode, ProcessingMode, ext_proc

if TYPE_CHECKING:
    from asm_proxy.config import ServerSettings

log = logging.getLogger("asm_proxy.stream")

BodyMode: TypeAlias = ProcessingMode.BodySendMode.ValueType
HeaderMode: TypeAlias = ProcessingMode.HeaderSendMode.ValueType
ModeKey: TypeAlias = tuple[BodyMode, HeaderMode, HeaderMode, BodyMode, HeaderMode]
NONE: BodyMode = BodySendMode.NONE
STREAMED: BodyMode = BodySendMode.STREAMED
BUFFERED: BodyMode = BodySendMode.BUFFERED
BUFFERED_PARTIAL: BodyMode = BodySendMode.BUFFERED_PARTIAL
FULL_DUPLEX: BodyMode = BodySendMode.FULL_DUPLEX_STREAMED
SEND: HeaderMode = HeaderSendMode.SEND
SKIP: HeaderMode = HeaderSendMode.SKIP

ONE_SHOT = (BUFFERED, BUFFERED_PARTIAL)
NO_BODY = BodyAccess.NONE

# Stages of one direction.
_NOTHING, _HEADERS, _BODY, _TRAILERS = 0, 1, 2, 3

ProcessingResponse = ext_proc.ProcessingResponse
Reply = Any  # a ProcessingResponse, a list of them, or None


class ProtocolError(Exception):
    """Envoy (or a client pretending to be it) broke the protocol; ends the stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
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


class Direction:
    """Progress of the request or the response through its messages."""

    __slots__ = (
        "assumed",
        "body_messages",
        "eos",
        "held",
        "mode",
        "name",
        "stage",
        "whole_done",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.stage = _NOTHING
        self.eos = False
        self.mode: BodyMode = NONE
        self.body_messages = 0
        self.whole_done = False
        self.held = False  # FULL_DUPLEX: chunks kept back until the body is complete
        # The mode is what asm-proxy asked for, not what Envoy said it is configured with:
        # an Envoy that ignores mode_override would send the body in pieces instead.
        self.assumed = False


# Responses that carry nothing but "continue", built once.
_CONTINUE = {
    "request_headers": ProcessingResponse(request_headers=ext_proc.HeadersResponse()),
    "response_headers": ProcessingResponse(response_headers=ext_proc.HeadersResponse()),
    "request_body": ProcessingResponse(request_body=ext_proc.BodyResponse()),
    "response_body": ProcessingResponse(response_body=ext_proc.BodyResponse()),
    "request_trailers": ProcessingResponse(request_trailers=ext_proc.TrailersResponse()),
    "response_trailers": ProcessingResponse(response_trailers=ext_proc.TrailersResponse()),
}
_MODES: dict[ModeKey, Any] = {}
_CONTINUE_WITH_MODE: dict[tuple[str, ModeKey], Any] = {}


def _mode_message(key: ModeKey) -> Any:
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


def _body_mode(access: BodyAccess, static: BodyMode) -> BodyMode:
    if static == FULL_DUPLEX:
        return FULL_DUPLEX  # Envoy does not switch into or out of full duplex mid-stream
    if access is BodyAccess.WHOLE:
        return static if static in ONE_SHOT else BUFFERED
    if access is BodyAccess.CHUNKS:
        return static if static != NONE else STREAMED
    return NONE


class Stream:
    """The state of one exchange and the handlers for each kind of message."""

    __slots__ = (
        "_loop",
        "chain",
        "closing",
        "finished",
        "http",
        "observability",
        "overrides",
        "plan",
        "request",
        "response",
        "settings",
        "static_request_mode",
        "static_response_mode",
    )

    def __init__(self, chain: Chain, settings: ServerSettings) -> None:
        self.chain = chain
        self.settings = settings
        self.http: Http | None = None
        self.plan: Plan | None = None
        self.request = Direction("request")
        self.response = Direction("response")
        self.observability = False
        self.overrides = settings.mode_override
        self.static_request_mode: BodyMode = NONE
        self.static_response_mode: BodyMode = NONE
        self.finished = False  # an immediate response was sent
        #: The reply just returned is the last this exchange needs: the server may end the
        #: stream cleanly after sending it, and Envoy carries on without asking again.
        self.closing = False
        self._loop = asyncio.get_running_loop()

    # -- entry point -------------------------------------------------------------------

    async def handle(self, msg: Any) -> Reply:
        kind = msg.WhichOneof("request")
        handler = _DISPATCH.get(kind) if kind is not None else None
        if handler is None:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ProcessingRequest has no known message set (expected one of "
                "request_headers, response_headers, request_body, response_body, "
                "request_trailers, response_trailers)",
            )
        counters.messages += 1
        deadline = self._loop.time() + self.settings.deadline
        http = self.http
        if http is None:
            http = self._start(msg, kind)
        if msg.attributes:
            attributes = msg.attributes
            http.add_attributes(lambda: codec.attributes_of(attributes))
        if msg.HasField("metadata_context"):
            metadata = msg.metadata_context
            http.set_metadata_source(lambda: codec.metadata_of(metadata))
        self.observability = msg.observability_mode
        reply = await handler(self, msg, deadline)
        if self.observability:
            return None
        return reply

    def _start(self, msg: Any, kind: str) -> Http:
        if msg.HasField("protocol_config"):
            config = msg.protocol_config
            self.static_request_mode = config.request_body_mode
            self.static_response_mode = config.response_body_mode
            if config.send_body_without_waiting_for_header_response:
                self.overrides = False  # Envoy ignores mode_override then
        if msg.observability_mode:
            self.overrides = False
        self.request.mode = self.static_request_mode
        self.response.mode = self.static_response_mode
        http = Http()
        if kind == "request_headers":
            http.request._receive_headers(msg.request_headers.headers)
        self.http = http
        return http

    def _select(self, http: Http) -> Plan:
        plan = self.plan
        if plan is None:
            plan = self.plan = self.chain.select(http)
        return plan

    # -- headers -------------------------------------------------------------------------

    async def _request_headers(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        d = self.request
        if d.stage != _NOTHING:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request_headers received after request {_STAGE_NAMES[d.stage]} on this stream",
            )
        d.stage = _HEADERS
        if self.plan is not None:  # the stream began with another message; take these in
            http.request._receive_headers(msg.request_headers.headers)
        plan = self._select(http)
        return await self._headers(
            "request_headers", d, http.request, plan, msg.request_headers.end_of_stream, deadline
        )

    async def _response_headers(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        d = self.response
        if d.stage != _NOTHING:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"response_headers received after response {_STAGE_NAMES[d.stage]} on this stream",
            )
        d.stage = _HEADERS
        headers = msg.response_headers
        http.response._receive_headers(headers.headers)
        plan = self._select(http)
        if not plan.needs.response_headers and not http._done:
            # No plugin of this exchange has a response hook: nothing to run or change.
            if headers.end_of_stream:
                d.eos = True
                http.response.body.complete = True
            counters.responses += 1
            return _CONTINUE["response_headers"]
        return await self._headers(
            "response_headers", d, http.response, plan, msg.response_headers.end_of_stream, deadline
        )

    async def _headers(
        self,
        kind: str,
        d: Direction,
        message: Message,
        plan: Plan,
        end_of_stream: bool,
        deadline: float,
    ) -> Reply:
        http = self.http
        assert http is not None
        outcome = None
        if end_of_stream:  # no body follows: header hooks can tell from body.complete
            d.eos = True
            message.body.complete = True
        hooks = plan.hooks[kind]
        if hooks and not self.finished:
            outcome = await run_hooks(hooks, http, (), deadline)
        if end_of_stream:
            whole = plan.hooks[d.name + "_body"]
            if outcome is None and whole and not self.finished:
                d.whole_done = True
                outcome = await run_hooks(whole, http, (), deadline)
        http.undo.commit()
        if outcome is not None:
            return self._immediate(outcome)
        if self.finished:
            return _CONTINUE[kind]

        mode_key = self._mode_override(plan, kind)
        if mode_key is not None:
            self.closing = self._nothing_more(plan, kind)
        ops = message._take_header_ops()
        metadata = http.take_metadata()
        route = http.take_route_cache()
        replaced = message.body.replacement if end_of_stream else None
        if not ops and not metadata and not route and replaced is None:
            counters.responses += 1
            if mode_key is None:
                return _CONTINUE[kind]
            cached = _CONTINUE_WITH_MODE.get((kind, mode_key))
            if cached is None:
                cached = ProcessingResponse()
                getattr(cached, kind).SetInParent()
                cached.mode_override.CopyFrom(_mode_message(mode_key))
                _CONTINUE_WITH_MODE[(kind, mode_key)] = cached
            return cached

        reply = ProcessingResponse()
        getattr(reply, kind).SetInParent()
        common = getattr(reply, kind).response
        self._common(common, kind, ops, route)
        if replaced is not None:
            # A body for a message that had none: CONTINUE_AND_REPLACE adds it.
            common.status = ext_proc.CommonResponse.CONTINUE_AND_REPLACE
            common.body_mutation.body = replaced
            counters.bodies_replaced += 1
            counters.body_bytes_sent += len(replaced)
        if mode_key is not None:
            reply.mode_override.CopyFrom(_mode_message(mode_key))
        if metadata:
            self._put_metadata(reply, metadata)
        counters.responses += 1
        return reply

    def _mode_override(self, plan: Plan, kind: str) -> ModeKey | None:
        """The ProcessingMode to ask for (as a cache key), or None to leave Envoy's as is."""
        if not self.overrides or self.observability:
            return None
        http = self.http
        assert http is not None
        if kind == "response_headers" and not http._done:
            return None  # nothing changed since the request headers' answer
        needs: Needs = plan.needs_now(http)
        request_body = self.request.mode
        request_trailers = SKIP
        if kind == "request_headers":
            request_body = _body_mode(needs.request_body, self.static_request_mode)
            if not self.request.eos:
                self.request.mode = request_body
                self.request.assumed = request_body != self.static_request_mode
            if needs.request_trailers or request_body == FULL_DUPLEX:
                request_trailers = SEND
        elif needs.request_trailers or request_body == FULL_DUPLEX:
            request_trailers = SEND
        response_body = _body_mode(needs.response_body, self.static_response_mode)
        self.response.mode = response_body
        self.response.assumed = response_body != self.static_response_mode
        response_trailers = (
            SEND if needs.response_trailers or response_body == FULL_DUPLEX else SKIP
        )
        response_headers = SEND if needs.response_headers else SKIP
        counters.mode_overrides += 1
        return (request_body, request_trailers, response_headers, response_body, response_trailers)

    def _nothing_more(self, plan: Plan, kind: str) -> bool:
        """Whether, after answering `kind` (a headers message), no plugin needs anything
        more of this exchange. Ending the stream then spares Envoy and the server the rest
        of it (the protocol: a stream the server closes cleanly, Envoy carries on without)."""
        if FULL_DUPLEX in (self.static_request_mode, self.static_response_mode):
            return False  # chunks may be held or in flight; let Envoy end the stream
        http = self.http
        assert http is not None
        needs = plan.needs_now(http)
        if not self.request.eos and (needs.request_body is not NO_BODY or needs.request_trailers):
            return False
        if kind == "request_headers" and needs.response_headers:
            return False
        return needs.response_body is NO_BODY and not needs.response_trailers

    def _common(self, common: Any, kind: str, ops: dict[str, Any], route: bool) -> None:
        if ops:
            common.header_mutation.CopyFrom(codec.header_mutation(ops))
            if kind.startswith("request") and not route and not ROUTING_HEADERS.isdisjoint(ops):
                route = True
        if route and kind.startswith("request"):
            # Envoy only clears the route cache when the response carries a header mutation.
            common.header_mutation.SetInParent()
            common.clear_route_cache = True

    def _attach_metadata(self, reply: Any) -> None:
        """Put the metadata plugins set since the last reply on this one."""
        http = self.http
        assert http is not None
        metadata = http.take_metadata()
        if metadata:
            self._put_metadata(reply, metadata)

    def _put_metadata(self, reply: Any, metadata: dict[str | None, dict[str, Any]]) -> None:
        reply.dynamic_metadata.CopyFrom(
            codec.dynamic_metadata(metadata, self.settings.metadata_namespace)
        )

    def _immediate(self, respond: Respond) -> Reply:
        http = self.http
        assert http is not None
        self.finished = True
        self.closing = not self.observability
        counters.immediate_responses += 1
        counters.responses += 1
        reply = ProcessingResponse(immediate_response=codec.immediate_response(respond))
        self._attach_metadata(reply)
        return reply

    # -- bodies ------------------------------------------------------------------------

    async def _request_body(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        return await self._body(
            "request_body", self.request, http.request, msg.request_body, deadline
        )

    async def _response_body(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        return await self._body(
            "response_body", self.response, http.response, msg.response_body, deadline
        )

    async def _body(
        self, kind: str, d: Direction, message: Message, body_msg: Any, deadline: float
    ) -> Reply:
        http = self.http
        assert http is not None
        if d.stage == _TRAILERS or d.eos:
            why = "trailers" if d.stage == _TRAILERS else "end_of_stream"
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{kind} received after the {d.name} {why} on this stream",
            )
        d.stage = _BODY
        d.body_messages += 1
        if d.body_messages > 1 and d.mode in ONE_SHOT:
            _warn_override_ignored()
            d.mode = STREAMED
        plan = self._select(http)
        data: bytes = body_msg.body
        eos: bool = body_msg.end_of_stream
        if eos:
            d.eos = True
        if self.finished:
            return _CONTINUE[kind]
        mode = d.mode
        if mode in ONE_SHOT:
            return await self._body_one_shot(kind, d, message, plan, data, eos, deadline)
        if mode == FULL_DUPLEX:
            return await self._body_duplex(kind, d, message, plan, data, eos, deadline)
        return await self._body_streamed(kind, d, message, plan, data, eos, deadline)

    async def _run_chunk_hooks(
        self, kind: str, plan: Plan, data: bytes, eos: bool, deadline: float
    ) -> tuple[Chunk | None, Respond | None]:
        hooks = plan.hooks[kind + "_chunk"]
        if not hooks:
            return None, None
        http = self.http
        assert http is not None
        chunk = Chunk(data, eos, http.undo)
        return chunk, await run_hooks(hooks, http, (chunk,), deadline)

    async def _body_one_shot(
        self,
        kind: str,
        d: Direction,
        message: Message,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        http = self.http
        assert http is not None
        body = message.body
        # BUFFERED without end_of_stream means trailers follow, unless the mode is only
        # assumed: then it may be the first piece of a streamed body. Call it incomplete.
        body.complete = eos or (d.mode == BUFFERED and not d.assumed)
        chunk, outcome = await self._run_chunk_hooks(kind, plan, data, eos, deadline)
        body.add_chunk(data)
        if chunk is not None and chunk.replaced:
            body.replace(chunk.data)
        whole = plan.hooks[kind]
        if outcome is None and whole:
            d.whole_done = True
            outcome = await run_hooks(whole, http, (), deadline)
        http.undo.commit()
        if outcome is not None:
            return self._immediate(outcome)
        replaced = body.replacement
        if replaced is not None and d.mode == BUFFERED and "content-length" in message.headers:
            # Envoy holds the headers in BUFFERED mode and checks content-length against the
            # new body, so it must be set in this same response.
            message.headers.set("content-length", str(len(replaced)))
        return self._body_reply(kind, message, replaced)

    async def _body_streamed(
        self,
        kind: str,
        d: Direction,
        message: Message,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        http = self.http
        assert http is not None
        chunk, outcome = await self._run_chunk_hooks(kind, plan, data, eos, deadline)
        whole = plan.hooks[kind]
        if outcome is None and whole and not d.whole_done:
            body = message.body
            body.add_chunk(data)
            if eos:
                outcome = await self._observe_whole(d, body, whole, deadline)
        http.undo.commit()
        if outcome is not None:
            return self._immediate(outcome)
        new = chunk.data if chunk is not None and chunk.replaced else None
        return self._body_reply(kind, message, new)

    async def _observe_whole(
        self, d: Direction, body: Body, whole: Any, deadline: float
    ) -> Respond | None:
        """Whole-body hooks on a body that was streamed on already: they may look, not change."""
        http = self.http
        assert http is not None
        d.whole_done = True
        body.complete = True
        outcome = await run_hooks(whole, http, (), deadline)
        if body.replaced:
            log.warning(
                "a plugin replaced the %s body, but Envoy streamed it (%s mode) and it has "
                "already gone on; the replacement is dropped. Ask for BUFFERED mode.",
                d.name,
                BodySendMode.Name(d.mode),
            )
            body._replacement = None
        return outcome

    async def _body_duplex(
        self,
        kind: str,
        d: Direction,
        message: Message,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        http = self.http
        assert http is not None
        chunk, outcome = await self._run_chunk_hooks(kind, plan, data, eos, deadline)
        if chunk is not None:
            data = chunk.data
        whole = plan.hooks[kind]
        if outcome is None and whole:
            d.held = True
            body = message.body
            body.add_chunk(data)
            if not eos:
                http.undo.commit()
                return None  # held until the body is complete
            d.whole_done = True
            body.complete = True
            outcome = await run_hooks(whole, http, (), deadline)
            http.undo.commit()
            if outcome is not None:
                return self._immediate(outcome)
            return self._duplex_body_replies(kind, body, eos=True)
        http.undo.commit()
        if outcome is not None:
            return self._immediate(outcome)
        return self._streamed_reply(kind, data, eos)

    def _duplex_body_replies(self, kind: str, body: Body, *, eos: bool) -> list[Any]:
        replacement = body.replacement
        if replacement is not None:
            counters.bodies_replaced += 1
            parts: list[bytes] = [replacement]
        else:
            parts = list(body.chunks) or [b""]
        last = len(parts) - 1
        return [self._streamed_reply(kind, part, eos and i == last) for i, part in enumerate(parts)]

    def _streamed_reply(self, kind: str, data: bytes, eos: bool) -> Any:
        """One FULL_DUPLEX_STREAMED body chunk, with any dynamic metadata set so far."""
        counters.responses += 1
        counters.body_bytes_sent += len(data)
        reply = ProcessingResponse()
        mutation = getattr(reply, kind).response.body_mutation
        mutation.streamed_response.body = data
        mutation.streamed_response.end_of_stream = eos
        self._attach_metadata(reply)
        return reply

    def _body_reply(self, kind: str, message: Message, new_body: bytes | None) -> Any:
        http = self.http
        assert http is not None
        ops = message._take_header_ops()
        metadata = http.take_metadata()
        route = http.take_route_cache()
        counters.responses += 1
        if not ops and not metadata and not route and new_body is None:
            return _CONTINUE[kind]
        reply = ProcessingResponse()
        getattr(reply, kind).SetInParent()
        common = getattr(reply, kind).response
        self._common(common, kind, ops, route)
        if new_body is not None:
            counters.bodies_replaced += 1
            counters.body_bytes_sent += len(new_body)
            if new_body:
                common.body_mutation.body = new_body
            else:
                common.body_mutation.clear_body = True
        if metadata:
            self._put_metadata(reply, metadata)
        return reply

    # -- trailers ----------------------------------------------------------------------

    async def _request_trailers(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        return await self._trailers(
            "request_trailers", self.request, http.request, msg.request_trailers.trailers, deadline
        )

    async def _response_trailers(self, msg: Any, deadline: float) -> Reply:
        http = self.http
        assert http is not None
        return await self._trailers(
            "response_trailers",
            self.response,
            http.response,
            msg.response_trailers.trailers,
            deadline,
        )

    async def _trailers(
        self, kind: str, d: Direction, message: Message, trailer_map: Any, deadline: float
    ) -> Reply:
        http = self.http
        assert http is not None
        if d.stage == _TRAILERS:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{kind} received twice on this stream",
            )
        if d.eos:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{kind} received after the {d.name} end_of_stream on this stream",
            )
        d.stage = _TRAILERS
        d.eos = True
        plan = self._select(http)
        message.trailers = Headers._adopt(codec.decode_header_map(trailer_map), http.undo)
        if self.finished:
            return _CONTINUE[kind]
        replies: list[Any] = []
        outcome = None
        body_kind = d.name + "_body"
        whole = plan.hooks[body_kind]
        if whole and not d.whole_done:
            # The body ended without end_of_stream: trailers say it is complete now.
            if d.mode == FULL_DUPLEX:
                d.whole_done = True
                message.body.complete = True
                outcome = await run_hooks(whole, http, (), deadline)
                if outcome is None and (d.held or message.body.replaced):
                    replies = self._duplex_body_replies(body_kind, message.body, eos=False)
            else:
                outcome = await self._observe_whole(d, message.body, whole, deadline)
        hooks = plan.hooks[kind]
        if outcome is None and hooks:
            outcome = await run_hooks(hooks, http, (), deadline)
        http.undo.commit()
        if outcome is not None:
            return self._immediate(outcome)
        ops = message.trailers.take_ops()
        metadata = http.take_metadata()
        counters.responses += 1
        if not ops and not metadata:
            reply = _CONTINUE[kind]
        else:
            reply = ProcessingResponse()
            trailers_response = getattr(reply, kind)
            if ops:
                trailers_response.header_mutation.CopyFrom(codec.header_mutation(ops))
            else:
                trailers_response.SetInParent()
            if metadata:
                self._put_metadata(reply, metadata)
        if replies:
            replies.append(reply)
            return replies
        return reply


_STAGE_NAMES = {_NOTHING: "nothing", _HEADERS: "headers", _BODY: "body", _TRAILERS: "trailers"}

Handler = Callable[[Stream, Any, float], Awaitable[Reply]]

_DISPATCH: dict[str, Handler] = {
    "request_headers": Stream._request_headers,
    "response_headers": Stream._response_headers,
    "request_body": Stream._request_body,
    "response_body": Stream._response_body,
    "request_trailers": Stream._request_trailers,
    "response_trailers": Stream._response_trailers,
}
