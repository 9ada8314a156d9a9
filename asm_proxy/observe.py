"""The observer seams: tracing and the stream metrics attach here, not in the hook loop or
the transports. (Hook metrics, on by default, are recorded by the hook loop itself into
each entry's cells, `Entry.meter`: an observer call per hook cost too much. The stream
metrics, on by default too, are `stream_meter`: two direct calls per stream, not the
observer loop, which cost twice as much.)

A hook observer is told before each hook runs and after it ends (with its outcome and how
long it took), like pluggy's hook-call monitoring; a `before` that returns None gets no
`after` for that call. The hook loop reads the observers from the exchange
(`Exchange.observers`): the process-wide list below, unless the exchange was given its
own. A stream observer is told when an ext_proc stream or an ext_authz Check begins and
ends. With no observer registered the loop pays one truth test per hook and services.py
and authz.judge one per stream; observers are process-wide, so they outlive a chain
swapped by a reload.

The tracer is asked once per exchange, when the exchange is made and before any hook
runs, whether to trace it. Nearly every exchange is not traced (its caller did not sample
it), so that is the cheap answer: nothing is kept. A traced exchange gets its `trace`
(ended with the exchange) and, in its own observer list, the tracer's hook observer; no
other exchange pays a call per hook or per stream end for tracing.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asm_proxy.chain import Entry
    from asm_proxy.events import Event
    from asm_proxy.exchange import Exchange, Http


class Outcome(enum.Enum):
    """How one hook call ended."""

    OK = "ok"  # returned None: the chain goes on
    RESPOND = "respond"  # returned a Respond: the chain stops, the client gets it
    ERROR = "error"  # raised, or returned something else (its changes undone)
    TIMEOUT = "timeout"  # overran its timeout or the message deadline (changes undone)
    SKIPPED = "skipped"  # no time was left to start it (counts as a timeout)

    # Members are singletons: hashed by identity, in C (Enum's own __hash__ is Python code,
    # and metrics look a hook's cells up by (event, outcome) at every call).
    __hash__ = object.__hash__

    @property
    def failed(self) -> bool:
        return self in _FAILED


_FAILED = frozenset({Outcome.ERROR, Outcome.TIMEOUT, Outcome.SKIPPED})
#: The outcomes every hook call ends with, read without the Enum class's attribute lookup
#: (~5x a module global's in Python 3.11).
OK, RESPOND = Outcome.OK, Outcome.RESPOND


class HookObserver(Protocol):
    """Told about every hook call. `before` returns a token handed back to `after` (a span,
    a start time), or None to skip `after` for this call; neither may raise (an exception
    is logged and the observer dropped)."""

    def before(self, entry: Entry, event: Event, http: Http) -> Any: ...

    def after(
        self,
        token: Any,
        entry: Entry,
        event: Event,
        outcome: Outcome,
        seconds: float,
        error: BaseException | None,
    ) -> None: ...


#: The registered observers; the hook loop reads this list directly.
observers: list[HookObserver] = []


def add_observer(observer: HookObserver) -> None:
    if observer not in observers:
        observers.append(observer)


def remove_observer(observer: HookObserver) -> None:
    if observer in observers:
        observers.remove(observer)


# -- the stream seam: one call when an ext_proc stream or ext_authz Check begins, one when
# it ends, from services.py and authz.judge, which every transport calls into -------------


class StreamEnd(enum.Enum):
    """How an ext_proc stream or an ext_authz Check ended."""

    COMPLETE = "complete"  # Envoy closed the stream, every message answered
    CLOSED_EARLY = "closed_early"  # asm-proxy ended it: the chain needed nothing more
    PROTOCOL_ERROR = "protocol_error"  # Envoy broke the protocol: ended with a gRPC status
    INTERNAL_ERROR = "internal_error"  # asm-proxy failed (a bug): ended with INTERNAL
    CANCELLED = "cancelled"  # Envoy reset it (client gone, timeout) or the server stopped
    ALLOWED = "allowed"  # ext_authz: the request may go on
    DENIED = "denied"  # ext_authz: refused (the exchange's `immediate_status` says how)

    __hash__ = object.__hash__  # as Outcome's: stream metrics look cells up by it


#: How most streams end, read without the Enum class's attribute lookup (services.py
#: sets one of them at every message).
COMPLETE, CANCELLED = StreamEnd.COMPLETE, StreamEnd.CANCELLED


class StreamObserver(Protocol):
    """Told when a stream (or Check) starts and ends. `started` returns a token handed back
    to `ended` with the stream's exchange (None if no message arrived), how it ended and
    how long it lasted. Neither may raise (an exception is logged, the observer dropped)."""

    def started(self, service: str) -> Any: ...

    def ended(
        self,
        token: Any,
        service: str,
        exchange: Exchange | None,
        end: StreamEnd,
        seconds: float,
    ) -> None: ...


class StreamMeter(Protocol):
    """The built-in stream metrics (asm_proxy.metrics.serving): `started` returns what
    `ended` is given back (the start time)."""

    def started(self, service: str) -> float: ...

    def ended(
        self, service: str, exchange: Exchange | None, end: StreamEnd, started: float
    ) -> None: ...


#: The stream metrics while the server records them (`metrics: true`, the default), else
#: None: services.py and authz.judge call it directly around every stream and check.
stream_meter: StreamMeter | None = None

#: The registered stream observers; services.py and authz.judge test it before calling in.
stream_observers: list[StreamObserver] = []

EXT_PROC = "ext_proc"
EXT_AUTHZ = "ext_authz"

_log = logging.getLogger("asm_proxy.observe")


def add_stream_observer(observer: StreamObserver) -> None:
    if observer not in stream_observers:
        stream_observers.append(observer)


def remove_stream_observer(observer: StreamObserver) -> None:
    if observer in stream_observers:
        stream_observers.remove(observer)


class Watching:
    """What `stream_started` hands its caller: the start time and each observer's token."""

    __slots__ = ("start", "tokens")

    def __init__(self, start: float, tokens: list[tuple[StreamObserver, Any]]) -> None:
        self.start = start
        self.tokens = tokens


def stream_started(service: str) -> Watching:
    tokens = []
    for observer in tuple(stream_observers):  # one may be dropped on the way
        try:
            tokens.append((observer, observer.started(service)))
        except Exception:
            _drop_stream_observer(observer)
    return Watching(time.perf_counter(), tokens)


def stream_ended(
    watching: Watching, service: str, exchange: Exchange | None, end: StreamEnd
) -> None:
    seconds = time.perf_counter() - watching.start
    for observer, token in watching.tokens:
        try:
            observer.ended(token, service, exchange, end, seconds)
        except Exception:
            _drop_stream_observer(observer)


def _drop_stream_observer(observer: StreamObserver) -> None:
    _log.exception("stream observer %r failed; it is removed", observer)
    remove_stream_observer(observer)


# -- the tracer: asked once per exchange, before its first hook ----------------------------


class ExchangeTrace(Protocol):
    """A traced exchange's trace (`Exchange.trace`): ended with the exchange."""

    def trace_id(self) -> str:
        """The trace id as logs print it (32 hex digits)."""
        ...

    def finish(self, exchange: Exchange, end: StreamEnd) -> None: ...


class Tracer(Protocol):
    def open(self, exchange: Exchange, service: str, wire: bytes | None) -> None:
        """Decide whether `exchange` is traced, from its request's trace headers (`wire`:
        the message that carried them as it came, when the caller has it, so they can be
        read without decoding Envoy's header list); if so set `exchange.trace` and add
        the hook observer to `exchange.observers`. May not raise."""
        ...


#: The installed tracer (asm_proxy.tracing), None without tracing: services.py, stream.py
#: and authz.judge test it once per exchange.
tracer: Tracer | None = None


def trace(exchange: Exchange, service: str, wire: bytes | None) -> None:
    """Ask the tracer about a new exchange (a tracer that raises is logged and removed)."""
    global tracer
    if tracer is None:
        return
    try:
        tracer.open(exchange, service, wire)
    except Exception:
        _log.exception("tracer %r failed; tracing stops", tracer)
        tracer = None


def trace_ended(exchange: Exchange, end: StreamEnd) -> None:
    """End a traced exchange's trace (called only when `exchange.trace` is set)."""
    found = exchange.trace
    exchange.trace = None
    if found is None:
        return
    try:
        found.finish(exchange, end)
    except Exception:
        _log.exception("trace %r failed to end", found)
