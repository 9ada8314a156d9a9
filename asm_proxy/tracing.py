"""Traces: a span per exchange and, when it is sampled, a child span per hook.

Configured by the standard OpenTelemetry environment variables, read when a server starts:

    OTEL_TRACES_EXPORTER      otlp | console | none (default: none — no tracing, no cost)
    OTEL_EXPORTER_OTLP_*      endpoint, headers, protocol (grpc, http/protobuf), ...
                              (the `otlp` extra: pip install 'asm-proxy[otlp]')
    OTEL_TRACES_SAMPLER(_ARG) parentbased_always_on (default), parentbased_traceidratio, ...
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*, OTEL_SDK_DISABLED
    OTEL_PROPAGATORS          default here: tracecontext, b3multi, b3 (Envoy and Istio
                              propagate B3; a traceparent wins when both are there)

Unlike the SDK's own default (otlp), no exporter is set up unless one is named: an
unconfigured asm-proxy must not send spans to a collector that is not there.

The exchange span (kind SERVER, named `ext_proc` or `ext_authz`) starts when the stream
does, is parented from the request's trace headers, and is opened lazily — at the first
hook, or at the end for an exchange no plugin ran on — because its parent is in headers
that arrive with the first message. Its attributes follow the OpenTelemetry HTTP semantic
conventions (`http.request.method`, `url.path` without the query, `server.address`,
`http.response.status_code` for a response asm-proxy gave itself) plus `asm_proxy.end`
(how the stream ended). A hook span is named `<plugin> <event>` and carries
`asm_proxy.plugin.name`, `asm_proxy.plugin.type`, `asm_proxy.hook` and `asm_proxy.outcome`;
a failed or overrunning hook's span has status ERROR and the exception recorded. An
unsampled exchange makes no spans and no hook spans: it costs the sampler's decision.

Both attach through the observer seams (asm_proxy.observe); with tracing off, neither is
registered and the request path pays nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from asm_proxy import __version__, logs, observe
from asm_proxy.envoy_headers import decode_value
from asm_proxy.observe import Outcome, StreamEnd

if TYPE_CHECKING:
    from asm_proxy.chain import Entry
    from asm_proxy.direction import Direction
    from asm_proxy.events import Event
    from asm_proxy.exchange import Exchange, Http

log = logging.getLogger("asm_proxy.tracing")


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


def trace_headers(d: Direction) -> dict[str, str]:
    """The trace headers of one side, without decoding the others (a plugin that only sets
    headers never has Envoy's header map decoded; tracing must not make it)."""
    headers = d.headers
    if headers is not None:
        return {k: v for k in TRACE_HEADERS if (v := headers.get(k)) is not None}
    raw = d.raw_headers
    found: dict[str, str] = {}
    if raw is not None:
        for h in raw.headers:
            key = h.key
            if key in TRACE_HEADERS:
                found[key] = decode_value(h.raw_value) if h.raw_value else h.value
    return found


class _PresetIds(IdGenerator):
    """Random ids, except that the next trace id can be chosen: the sampler is asked
    before a span is made, and the span must get the trace id it was asked about."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self.next = 0

    def generate_span_id(self) -> int:
        return self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        chosen, self.next = self.next, 0
        return chosen or self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return self.inner.is_trace_id_random()


class _Trace:
    """One exchange's tracing state, kept in a context variable of the serving task."""

    __slots__ = ("decided", "service", "span", "start")

    def __init__(self, service: str) -> None:
        self.service = service
        self.start = time.time_ns()
        self.decided = False
        self.span: Span | None = None  # None: not sampled (or not decided yet)


_current: ContextVar[_Trace | None] = ContextVar("asm_proxy_trace", default=None)
_ROOT = Context()
_SAMPLED = frozenset({Decision.RECORD_AND_SAMPLE})


def current_trace_id() -> str | None:
    """The trace id of the exchange this task serves, if its span is recorded (for logs)."""
    t = _current.get()
    if t is None or t.span is None:
        return None
    return format(t.span.get_span_context().trace_id, "032x")


def default_propagator() -> TextMapPropagator:
    """OTEL_PROPAGATORS if set, else W3C trace context and B3 (multi and single header).
    Later propagators win when several find a parent, so traceparent comes last."""
    if os.environ.get("OTEL_PROPAGATORS"):
        return get_global_textmap()
    return CompositePropagator([B3MultiFormat(), B3SingleFormat(), TraceContextTextMapPropagator()])


class Tracing:
    """Spans for exchanges and hooks from `provider`, parents found by `propagator`."""

    def __init__(
        self, provider: TracerProvider, propagator: TextMapPropagator | None = None
    ) -> None:
        self.provider = provider
        self.sampler = provider.sampler
        self.tracer = provider.get_tracer("asm_proxy", __version__)
        # The SDK's Tracer draws its ids from this attribute; ours lets the sampler be
        # asked first (an unsampled exchange then costs no span at all).
        self.ids = _PresetIds(self.tracer.id_generator)  # type: ignore[attr-defined]
        self.tracer.id_generator = self.ids  # type: ignore[attr-defined]
        self.propagator = propagator or default_propagator()
        self.roots_dropped = roots_dropped(self.sampler)
        # The default propagators and a sampler that drops what the parent dropped: the
        # common unsampled case is then read off the headers, without either.
        self.obeys_parents = propagator is None and not os.environ.get("OTEL_PROPAGATORS")
        self.obeys_parents = self.obeys_parents and follows_unsampled_parents(self.sampler)

    # -- the stream observer ------------------------------------------------------------

    def started(self, service: str) -> _Trace:
        t = _Trace(service)
        _current.set(t)
        return t

    def ended(
        self,
        token: Any,
        service: str,
        exchange: Exchange | None,
        end: StreamEnd,
        seconds: float,
    ) -> None:
        t: _Trace = token
        if not t.decided and exchange is not None:
            self._open(t, exchange)
        span = t.span
        if span is None:
            return
        span.set_attribute("asm_proxy.end", end.value)
        if exchange is not None:
            status = exchange.immediate_status or _response_status(exchange)
            if status:
                span.set_attribute("http.response.status_code", status)
        if end in (StreamEnd.INTERNAL_ERROR, StreamEnd.PROTOCOL_ERROR):
            span.set_status(Status(StatusCode.ERROR, end.value))
        span.end()

    def _open(self, t: _Trace, exchange: Exchange) -> None:
        """Start the exchange span, parented from the request's trace headers, if the
        sampler says so. It is asked first, so an unsampled exchange makes no span."""
        t.decided = True
        carrier = trace_headers(exchange.request)
        if not carrier:
            if self.roots_dropped:
                return  # no parent, and the sampler never samples a root
        elif self.obeys_parents and parent_declined(carrier):
            return  # the caller did not sample its trace, and the sampler follows it
        parent = self.propagator.extract(carrier) if carrier else _ROOT
        parent_span = trace.get_current_span(parent).get_span_context()
        if parent_span.is_valid:
            trace_id = parent_span.trace_id
        else:
            trace_id = self.ids.inner.generate_trace_id()
        result = self.sampler.should_sample(parent, trace_id, t.service, SpanKind.SERVER)
        if result.decision not in _SAMPLED:
            return
        if not parent_span.is_valid:
            self.ids.next = trace_id  # the root span gets the id the sampler judged
        request = exchange.http.request
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "asm_proxy.service": t.service,
        }
        method = request.method
        if method:
            attributes["http.request.method"] = method
        path = request.path_only
        if path:
            attributes["url.path"] = path
        host = request.host
        if host:
            attributes["server.address"] = host
        span = self.tracer.start_span(
            t.service,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=t.start,
        )
        t.span = span if span.is_recording() else None

    # -- the hook observer ----------------------------------------------------------------

    def before(self, entry: Entry, event: Event, http: Http) -> Span | None:
        t = _current.get()
        if t is None:
            return None
        if not t.decided:
            self._open(t, http._x)
        parent = t.span
        if parent is None:
            return None
        return self.tracer.start_span(
            f"{entry.name} {event.hook.removeprefix('on_')}",
            context=trace.set_span_in_context(parent),
            attributes={
                "asm_proxy.plugin.name": entry.name,
                "asm_proxy.plugin.type": entry.type_name,
                "asm_proxy.hook": event.hook,
            },
        )

    def after(
        self,
        token: Any,
        entry: Entry,
        event: Event,
        outcome: Outcome,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        span: Span | None = token
        if span is None:
            return
        span.set_attribute("asm_proxy.outcome", outcome.value)
        if outcome.failed:
            span.set_status(Status(StatusCode.ERROR, f"{outcome.value}"))
            if error is not None:
                span.record_exception(error)
        span.end()


def roots_dropped(sampler: Sampler) -> bool:
    """Whether `sampler` drops every span without a parent, whatever its trace id (so an
    exchange without trace headers needs no decision): ALWAYS_OFF, a ratio of 0, or
    ParentBased with one of those as its root (OTEL_TRACES_SAMPLER=parentbased_traceidratio
    with OTEL_TRACES_SAMPLER_ARG=0: trace only what the caller sampled)."""
    if isinstance(sampler, ParentBased):
        sampler = sampler._root
    if isinstance(sampler, TraceIdRatioBased):
        return sampler.bound == 0
    return sampler is ALWAYS_OFF


def follows_unsampled_parents(sampler: Sampler) -> bool:
    """Whether `sampler` drops every span whose remote parent was not sampled (ParentBased
    with its default remote_parent_not_sampled: the SDK's default and the parentbased_*
    samplers of OTEL_TRACES_SAMPLER)."""
    return isinstance(sampler, ParentBased) and sampler._remote_parent_not_sampled is ALWAYS_OFF


def _hex(text: str, length: int) -> bool:
    """`length` lower-case hex digits, not all zero (W3C and B3 ids)."""
    if len(text) != length or (not text.islower() and not text.isdigit()):
        return False
    try:
        return int(text, 16) != 0
    except ValueError:
        return False


def parent_declined(carrier: dict[str, str]) -> bool:
    """True only when the trace headers name a valid parent that was not sampled, as the
    default propagators would read them (traceparent before b3 before x-b3-*). Anything
    else (sampled, malformed, unusual) is False: the propagators and the sampler decide."""
    parent = carrier.get("traceparent")
    if parent is not None:
        parts = parent.strip().split("-")
        if (
            len(parts) == 4
            and parts[0] == "00"
            and _hex(parts[1], 32)
            and _hex(parts[2], 16)
            and len(parts[3]) == 2
        ):
            try:
                return not int(parts[3], 16) & 1
            except ValueError:
                return False
        return False
    single = carrier.get("b3")
    if single is not None:
        fields = single.strip().split("-")
        return (
            len(fields) in (3, 4)
            and len(fields[0]) in (16, 32)
            and _hex(fields[0], len(fields[0]))
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


def _response_status(exchange: Exchange) -> int:
    """The response's :status, or 0 when no response headers came (without making an
    empty response side just to ask)."""
    d = exchange.response
    if d.headers is None and d.raw_headers is None:
        return 0
    return exchange.http.response.status


# -- setting it up -------------------------------------------------------------------------

_installed: Tracing | None = None


def install(tracing: Tracing | None) -> None:
    """Trace with `tracing` from now on (None: stop tracing)."""
    global _installed
    old = _installed
    if old is not None:
        observe.remove_observer(old)
        observe.remove_stream_observer(old)
        logs.trace_id_hook.clear()
    _installed = tracing
    if tracing is not None:
        observe.add_stream_observer(tracing)
        observe.add_observer(tracing)
        logs.trace_id_hook.append(current_trace_id)


class TracingConfigError(ValueError):
    """OTEL_* settings asm-proxy cannot act on; the message says what to change."""


def _exporter_names(value: str) -> list[str]:
    return [n.strip().lower() for n in value.split(",") if n.strip() and n.strip() != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol, "")
        if not name:
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf"
            )
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        hint = " (pip install 'asm-proxy[otlp]')" if name.startswith("otlp") else ""
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} installed{hint}")
    exporter_class = found[0].load()
    exporter: SpanExporter = exporter_class()
    return exporter


def resource() -> Resource:
    """service.name asm-proxy (unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say
    otherwise), its version, and this process as the instance."""
    attributes: dict[str, str | int] = {
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}/{os.getpid()}",
    }
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes["service.name"] = "asm-proxy"
    return Resource.create(attributes)


def from_environment(
    environ: Mapping[str, str] | None = None, processors: Sequence[SpanProcessor] = ()
) -> Tracing | None:
    """The tracing the OTEL_* variables ask for, or None for none. `processors` are added
    (tests give an in-memory exporter's)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    names = _exporter_names(env.get("OTEL_TRACES_EXPORTER", "none"))
    if not names and not processors:
        return None
    exporters = [_exporter(name, env) for name in names]
    provider = TracerProvider(resource=resource())  # the sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider)


_configured = False


def configure_once() -> None:
    """Set tracing up from the environment, once per process (a server's start)."""
    global _configured
    if _configured:
        return
    _configured = True
    try:
        tracing = from_environment()
    except TracingConfigError as exc:
        log.error("tracing is off: %s", exc)
        return
    if tracing is not None:
        install(tracing)
        log.info(
            "tracing: exporting with %s, sampler %s",
            os.environ.get("OTEL_TRACES_EXPORTER"),
            tracing.provider.sampler.get_description(),
        )


def shutdown() -> None:
    """Flush and stop the installed tracing (a worker about to exit)."""
    tracing = _installed
    if tracing is not None:
        install(None)
        tracing.provider.shutdown()
