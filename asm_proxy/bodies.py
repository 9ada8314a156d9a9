"""Body strategies: how a body arriving in one of Envoy's modes reaches plugins and Envoy.

One strategy per way Envoy sends a body, each working on a `Direction`:
- `ONE_SHOT` (BUFFERED / BUFFERED_PARTIAL): one message with the body (a prefix of it past
  the buffer limit in BUFFERED_PARTIAL); chunk hooks then whole-body hooks run; a
  replacement is sent back (with content-length fixed in BUFFERED mode).
- `STREAMED` (STREAMED, or NONE when Envoy sends anyway): each chunk is answered as it
  comes; chunk hooks may rewrite it. Whole-body hooks can only look (the chunks have gone
  on already), and run once the body ends.
- `FULL_DUPLEX` (FULL_DUPLEX_STREAMED): chunks are answered with StreamedBodyResponses.
  With whole-body hooks the chunks are held until the body ends, then sent on (replaced
  or as received).

A strategy gets what it needs through `BodyContext` (the stream implements it), so each can
be driven on its own.
"""

from __future__ import annotations

import abc
import logging
from typing import Protocol

from asm_proxy import replies
from asm_proxy.body import Chunk
from asm_proxy.chain import Hook, Plan, run_hooks
from asm_proxy.direction import BodyMode, Direction
from asm_proxy.exchange import Exchange
from asm_proxy.modes import BUFFERED, FULL_DUPLEX, ONE_SHOT
from asm_proxy.plugin import Respond
from asm_proxy.replies import Reply
from asm_proxy.wire import BodySendMode, ProcessingResponse

log = logging.getLogger("asm_proxy.stream")


class BodyContext(Protocol):
    """What a strategy needs of the stream it serves."""

    @property
    def namespace(self) -> str: ...

    def immediate(self, respond: Respond) -> ProcessingResponse: ...


async def _observe_whole(
    x: Exchange, d: Direction, whole: tuple[Hook, ...], deadline: float
) -> Respond | None:
    """Whole-body hooks on a body that was streamed on already: they may look, not change."""
    d.whole_done = True
    buffer = d.buffer()
    buffer.complete = True
    outcome = await run_hooks(whole, x, (), deadline)
    if buffer.replacement is not None:
        log.warning(
            "a plugin replaced the %s body, but Envoy streamed it (%s mode) and it has "
            "already gone on; the replacement is dropped. Ask for BUFFERED mode.",
            d.side,
            BodySendMode.Name(d.mode),
        )
        buffer.replacement = None
    return outcome


class BodyStrategy(abc.ABC):
    """A body message's handling in one mode; the end of a body that trailers announce."""

    @abc.abstractmethod
    async def body(
        self,
        s: BodyContext,
        x: Exchange,
        d: Direction,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        """Run the hooks this body message calls for and answer it."""

    async def end_at_trailers(
        self, s: BodyContext, x: Exchange, d: Direction, plan: Plan, deadline: float
    ) -> tuple[list[ProcessingResponse], Respond | None]:
        """The body ended without end_of_stream, trailers say it is complete now: run the
        whole-body hooks that have not run. Returns replies to send before the trailers'."""
        whole = plan.hooks[d.events.body]
        if not whole or d.whole_done:
            return [], None
        return [], await _observe_whole(x, d, whole, deadline)


class OneShot(BodyStrategy):
    async def body(
        self,
        s: BodyContext,
        x: Exchange,
        d: Direction,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        buffer = d.buffer()
        # BUFFERED without end_of_stream means trailers follow, unless the mode is only
        # assumed: then it may be the first piece of a streamed body. Call it incomplete.
        buffer.complete = eos or (d.mode == BUFFERED and not d.assumed)
        chunk: Chunk | None = None
        outcome: Respond | None = None
        hooks = plan.hooks[d.events.chunk]
        if hooks:  # run_hooks costs a coroutine; most bodies have no chunk hook
            chunk = Chunk(data, eos, x.undo)
            outcome = await run_hooks(hooks, x, (chunk,), deadline)
        buffer.add(data)
        if chunk is not None and chunk.replaced:
            buffer.replacement = chunk.data
        whole = plan.hooks[d.events.body]
        if outcome is None and whole:
            d.whole_done = True
            outcome = await run_hooks(whole, x, (), deadline)
        x.undo.commit()
        if outcome is not None:
            return s.immediate(outcome)
        replaced = buffer.replacement
        if replaced is not None and d.mode == BUFFERED:
            headers = d.headers_view()
            if "content-length" in headers:
                # Envoy holds the headers in BUFFERED mode and checks content-length against
                # the new body, so it must be set in this same response.
                headers.set("content-length", str(len(replaced)))
        return replies.body(x, d, d.events.body, s.namespace, replaced)


class Streamed(BodyStrategy):
    async def body(
        self,
        s: BodyContext,
        x: Exchange,
        d: Direction,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        chunk: Chunk | None = None
        outcome: Respond | None = None
        hooks = plan.hooks[d.events.chunk]
        if hooks:  # run_hooks costs a coroutine; most bodies have no chunk hook
            chunk = Chunk(data, eos, x.undo)
            outcome = await run_hooks(hooks, x, (chunk,), deadline)
        whole = plan.hooks[d.events.body]
        if outcome is None and whole and not d.whole_done:
            d.buffer().add(data)
            if eos:
                outcome = await _observe_whole(x, d, whole, deadline)
        x.undo.commit()
        if outcome is not None:
            return s.immediate(outcome)
        new = chunk.data if chunk is not None and chunk.replaced else None
        return replies.body(x, d, d.events.body, s.namespace, new)


class FullDuplex(BodyStrategy):
    async def body(
        self,
        s: BodyContext,
        x: Exchange,
        d: Direction,
        plan: Plan,
        data: bytes,
        eos: bool,
        deadline: float,
    ) -> Reply:
        event = d.events.body
        chunk: Chunk | None = None
        outcome: Respond | None = None
        hooks = plan.hooks[d.events.chunk]
        if hooks:  # run_hooks costs a coroutine; most bodies have no chunk hook
            chunk = Chunk(data, eos, x.undo)
            outcome = await run_hooks(hooks, x, (chunk,), deadline)
        if chunk is not None:
            data = chunk.data
        whole = plan.hooks[event]
        if outcome is None and whole:
            d.held = True
            buffer = d.buffer()
            buffer.add(data)
            if not eos:
                x.undo.commit()
                return None  # held until the body is complete
            d.whole_done = True
            buffer.complete = True
            outcome = await run_hooks(whole, x, (), deadline)
            x.undo.commit()
            if outcome is not None:
                return s.immediate(outcome)
            return replies.held(x, d, event, s.namespace, eos=True)
        x.undo.commit()
        if outcome is not None:
            return s.immediate(outcome)
        return replies.streamed(x, event, s.namespace, data, eos)

    async def end_at_trailers(
        self, s: BodyContext, x: Exchange, d: Direction, plan: Plan, deadline: float
    ) -> tuple[list[ProcessingResponse], Respond | None]:
        """Trailers end the body: the whole-body hooks run, and held (or replaced) chunks go
        out before the trailers' answer."""
        whole = plan.hooks[d.events.body]
        if not whole or d.whole_done:
            return [], None
        d.whole_done = True
        buffer = d.buffer()
        buffer.complete = True
        outcome = await run_hooks(whole, x, (), deadline)
        if outcome is None and (d.held or buffer.replacement is not None):
            return replies.held(x, d, d.events.body, s.namespace, eos=False), None
        return [], outcome


ONE_SHOT_STRATEGY = OneShot()
STREAMED_STRATEGY = Streamed()
FULL_DUPLEX_STRATEGY = FullDuplex()


_BY_MODE: dict[BodyMode, BodyStrategy] = {mode: ONE_SHOT_STRATEGY for mode in ONE_SHOT} | {
    FULL_DUPLEX: FULL_DUPLEX_STRATEGY
}


def for_mode(mode: BodyMode) -> BodyStrategy:
    """The strategy for a body Envoy sends in `mode` (STREAMED for the rest)."""
    return _BY_MODE.get(mode, STREAMED_STRATEGY)
