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

The exchange span (kind SERVER, named `ext_proc` or `ext_authz`) starts when the exchange
does — with its first message, or the Check — and is parented from the request's trace
headers. Its attributes follow the OpenTelemetry HTTP semantic conventions
(`http.request.method`, `url.path` without the query, `server.address`,
`http.response.status_code` for a response asm-proxy gave itself) plus `asm_proxy.end`
(how the stream ended). A hook span is named `<plugin> <event>` and carries
`asm_proxy.plugin.name`, `asm_proxy.plugin.type`, `asm_proxy.hook` and `asm_proxy.outcome`;
a failed or overrunning hook's span has status ERROR and the exception recorded.

Tracing is the tracer of asm_proxy.observe: asked once per exchange, before its first
hook. An unsampled exchange (nearly all of them) makes no span, keeps nothing and pays no
call per hook: the decision is read off the message's bytes where it can be
(asm_proxy.trace_headers) and taken without the SDK's sampler call where its answer is known
(a parent that was not sampled, a trace id outside the ratio). Only a sampled exchange
gets a span and this class as its hook observer. With tracing off nothing is installed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
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

from asm_proxy import __version__, observe
from asm_proxy.observe import Outcome, StreamEnd
from asm_proxy.trace_headers import DECLINED, NONE, parent_declined, trace_headers, verdict

if TYPE_CHECKING:
    from asm_proxy.chain import Entry
    from asm_proxy.events import Event
    from asm_proxy.exchange import Exchange, Http

log = logging.getLogger("asm_proxy.tracing")


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
    """A traced exchange's span (`Exchange.trace`), and the context its hook spans are
    made in."""

    __slots__ = ("context", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)

    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def finish(self, exchange: Exchange, end: StreamEnd) -> None:
        span = self.span
        span.set_attribute("asm_proxy.end", end.value)
        status = exchange.immediate_status or _response_status(exchange)
        if status:
            span.set_attribute("http.response.status_code", status)
        if end in (StreamEnd.INTERNAL_ERROR, StreamEnd.PROTOCOL_ERROR):
            span.set_status(Status(StatusCode.ERROR, end.value))
        span.end()


_ROOT = Context()
_SAMPLED = frozenset({Decision.RECORD_AND_SAMPLE})


def default_propagator() -> TextMapPropagator:
    """OTEL_PROPAGATORS if set, else W3C trace context and B3 (multi and single header).
    Later propagators win when several find a parent, so traceparent comes last."""
    if os.environ.get("OTEL_PROPAGATORS"):
        return get_global_textmap()
    return CompositePropagator([B3MultiFormat(), B3SingleFormat(), TraceContextTextMapPropagator()])


class Tracing:
    """Spans for exchanges and hooks from `provider`, parents found by `propagator`: the
    tracer of asm_proxy.observe, and the hook observer of the exchanges it traces."""

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
        self.root_ratio = root_ratio(self.sampler)
        # The default propagators and a sampler that drops what the parent dropped: the
        # common unsampled case is then read off the headers, without either.
        self.obeys_parents = propagator is None and not os.environ.get("OTEL_PROPAGATORS")
        self.obeys_parents = self.obeys_parents and follows_unsampled_parents(self.sampler)

    # -- the tracer: one decision per exchange ---------------------------------------------

    def open(self, exchange: Exchange, service: str, wire: bytes | None) -> None:
        """Start the exchange's span, parented from its request's trace headers, if the
        sampler says so. The cheap answers come first, as the sampler would give them:
        no trace headers and a sampler that drops roots (or a ratio the new trace id
        misses), or a parent that was not sampled and a sampler that follows it. Only a
        sampled exchange makes a span and gets hook spans."""
        carrier: dict[str, str] | None = None
        if wire is not None:
            seen = verdict(wire)
            if seen == NONE:
                carrier = {}  # no header a parent is read from
            elif seen == DECLINED and self.obeys_parents:
                return
        if carrier is None:
            carrier = trace_headers(exchange.request)
        if not carrier:
            if self.roots_dropped:
                return
            trace_id = self.ids.inner.generate_trace_id()
            ratio = self.root_ratio
            if ratio is not None and trace_id & ratio.TRACE_ID_LIMIT >= ratio.bound:
                return  # what TraceIdRatioBased answers for this id
            parent, parent_valid = _ROOT, False
        else:
            if self.obeys_parents and parent_declined(carrier):
                return
            parent = self.propagator.extract(carrier)
            parent_span = trace.get_current_span(parent).get_span_context()
            parent_valid = parent_span.is_valid
            ids = self.ids.inner
            trace_id = parent_span.trace_id if parent_valid else ids.generate_trace_id()
        result = self.sampler.should_sample(parent, trace_id, service, SpanKind.SERVER)
        if result.decision not in _SAMPLED:
            return
        if not parent_valid:
            self.ids.next = trace_id  # the root span gets the id the sampler judged
        span = self.tracer.start_span(
            service,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(exchange, service),
        )
        if not span.is_recording():
            return
        exchange.trace = _Trace(span)
        exchange.observers = [*exchange.observers, self]

    # -- the hook observer of a traced exchange ----------------------------------------------

    def before(self, entry: Entry, event: Event, http: Http) -> Span | None:
        traced = http._x.trace
        if not isinstance(traced, _Trace):
            return None
        return self.tracer.start_span(
            f"{entry.name} {event.hook.removeprefix('on_')}",
            context=traced.context,
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
        span: Span = token
        span.set_attribute("asm_proxy.outcome", outcome.value)
        if outcome.failed:
            span.set_status(Status(StatusCode.ERROR, f"{outcome.value}"))
            if error is not None:
                span.record_exception(error)
        span.end()


def _attributes(exchange: Exchange, service: str) -> dict[str, str | int]:
    """The exchange span's attributes (OpenTelemetry HTTP semantic conventions)."""
    request = exchange.http.request
    attributes: dict[str, str | int] = {"rpc.system": "grpc", "asm_proxy.service": service}
    method = request.method
    if method:
        attributes["http.request.method"] = method
    path = request.path_only
    if path:
        attributes["url.path"] = path
    host = request.host
    if host:
        attributes["server.address"] = host
    return attributes


def root_ratio(sampler: Sampler) -> TraceIdRatioBased | None:
    """The ratio sampler that decides an exchange without a parent, if that is how
    `sampler` decides it (TraceIdRatioBased, or ParentBased with one as its root:
    OTEL_TRACES_SAMPLER=parentbased_traceidratio): its answer is a comparison of the
    trace id, made here without the SDK's call."""
    if isinstance(sampler, ParentBased):
        sampler = sampler._root
    return sampler if isinstance(sampler, TraceIdRatioBased) else None


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
    _installed = tracing
    observe.tracer = tracing


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
