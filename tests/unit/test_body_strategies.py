"""Each body strategy driven on its own: a Direction, a plan and a body, no stream."""

from __future__ import annotations

import asyncio
from typing import Any

from asm_proxy import bodies, modes, replies
from asm_proxy.api import Chunk, Http, Plugin, Respond
from asm_proxy.chain import Chain, Entry, Plan
from asm_proxy.codec import header_map_of
from asm_proxy.exchange import Exchange
from asm_proxy.wire import ProcessingResponse


class Upper(Plugin):
    """Whole request bodies upper-cased."""

    def on_request_body(self, http: Http) -> None:
        body = http.request.body
        if body.complete:
            body.replace(body.data.upper())


class Dashes(Plugin):
    """Each request chunk with a dash appended."""

    def on_request_body_chunk(self, http: Http, chunk: Chunk) -> None:
        chunk.replace(chunk.data + b"-")


class Refuse(Plugin):
    def on_request_body(self, http: Http) -> Respond:
        return Respond(413, body="too much")


class Context:
    """What a strategy needs of a stream."""

    namespace = "asm-proxy"

    def __init__(self, x: Exchange) -> None:
        self.x = x

    def immediate(self, respond: Respond) -> ProcessingResponse:
        return replies.immediate(self.x, respond, self.namespace)


def setup(plugin: type[Plugin], mode: Any) -> tuple[Context, Exchange, Plan]:
    chain = Chain([Entry(index=0, name="p", type_name="p", plugin=plugin(None))])
    x = Exchange()
    x.request.receive_headers(header_map_of([(":path", "/"), ("content-length", "5")]))
    x.request.mode = mode
    return Context(x), x, chain.select(x)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_strategy_follows_the_mode() -> None:
    assert bodies.for_mode(modes.BUFFERED) is bodies.ONE_SHOT_STRATEGY
    assert bodies.for_mode(modes.BUFFERED_PARTIAL) is bodies.ONE_SHOT_STRATEGY
    assert bodies.for_mode(modes.STREAMED) is bodies.STREAMED_STRATEGY
    assert bodies.for_mode(modes.NONE) is bodies.STREAMED_STRATEGY
    assert bodies.for_mode(modes.FULL_DUPLEX) is bodies.FULL_DUPLEX_STRATEGY


class TestOneShot:
    def test_the_whole_body_is_replaced_and_content_length_fixed(self) -> None:
        ctx, x, plan = setup(Upper, modes.BUFFERED)
        reply = run(bodies.ONE_SHOT_STRATEGY.body(ctx, x, x.request, plan, b"hello", True, 1e9))
        common = reply.request_body.response
        assert common.body_mutation.body == b"HELLO"
        assert [(h.header.key, h.header.raw_value) for h in common.header_mutation.set_headers] == [
            ("content-length", b"5")
        ]
        assert x.request.whole_done and x.request.buffer().complete

    def test_a_respond_becomes_an_immediate_response(self) -> None:
        ctx, x, plan = setup(Refuse, modes.BUFFERED)
        reply = run(bodies.ONE_SHOT_STRATEGY.body(ctx, x, x.request, plan, b"x", True, 1e9))
        assert reply.immediate_response.status.code == 413

    def test_an_unchanged_body_is_continue(self) -> None:
        ctx, x, plan = setup(Dashes, modes.BUFFERED)
        x.request.buffer()
        reply = run(bodies.ONE_SHOT_STRATEGY.body(ctx, x, x.request, plan, b"ab", True, 1e9))
        assert reply.request_body.response.body_mutation.body == b"ab-"


class TestStreamed:
    def test_each_chunk_is_answered_with_its_replacement(self) -> None:
        ctx, x, plan = setup(Dashes, modes.STREAMED)
        first = run(bodies.STREAMED_STRATEGY.body(ctx, x, x.request, plan, b"a", False, 1e9))
        last = run(bodies.STREAMED_STRATEGY.body(ctx, x, x.request, plan, b"b", True, 1e9))
        assert first.request_body.response.body_mutation.body == b"a-"
        assert last.request_body.response.body_mutation.body == b"b-"
        assert x.request.body is None  # nothing kept: no whole-body hook

    def test_whole_body_hooks_only_look(self) -> None:
        """The chunks went on already: a replacement is dropped, not sent."""
        ctx, x, plan = setup(Upper, modes.STREAMED)
        first = run(bodies.STREAMED_STRATEGY.body(ctx, x, x.request, plan, b"ab", False, 1e9))
        last = run(bodies.STREAMED_STRATEGY.body(ctx, x, x.request, plan, b"cd", True, 1e9))
        assert first is replies.CONTINUE[x.request.events.body]
        assert last is replies.CONTINUE[x.request.events.body]
        buffer = x.request.buffer()
        assert buffer.join() == b"abcd" and buffer.replacement is None
        assert x.request.whole_done


class TestFullDuplex:
    def test_chunks_are_held_until_the_body_is_complete(self) -> None:
        ctx, x, plan = setup(Upper, modes.FULL_DUPLEX)
        held = run(bodies.FULL_DUPLEX_STRATEGY.body(ctx, x, x.request, plan, b"ab", False, 1e9))
        sent = run(bodies.FULL_DUPLEX_STRATEGY.body(ctx, x, x.request, plan, b"cd", True, 1e9))
        assert held is None
        assert [
            (
                r.request_body.response.body_mutation.streamed_response.body,
                r.request_body.response.body_mutation.streamed_response.end_of_stream,
            )
            for r in sent
        ] == [(b"ABCD", True)]

    def test_without_whole_body_hooks_each_chunk_streams_on(self) -> None:
        ctx, x, plan = setup(Dashes, modes.FULL_DUPLEX)
        reply = run(bodies.FULL_DUPLEX_STRATEGY.body(ctx, x, x.request, plan, b"a", False, 1e9))
        streamed = reply.request_body.response.body_mutation.streamed_response
        assert (streamed.body, streamed.end_of_stream) == (b"a-", False)

    def test_trailers_end_a_held_body(self) -> None:
        """Trailers instead of end_of_stream: the hooks run, the held chunks go out first."""
        ctx, x, plan = setup(Upper, modes.FULL_DUPLEX)
        run(bodies.FULL_DUPLEX_STRATEGY.body(ctx, x, x.request, plan, b"ab", False, 1e9))
        before, outcome = run(
            bodies.FULL_DUPLEX_STRATEGY.end_at_trailers(ctx, x, x.request, plan, 1e9)
        )
        assert outcome is None
        (reply,) = before
        streamed = reply.request_body.response.body_mutation.streamed_response
        assert (streamed.body, streamed.end_of_stream) == (b"AB", False)
