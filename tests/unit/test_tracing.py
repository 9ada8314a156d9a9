"""Tracing's shortcuts agree with OpenTelemetry: whenever asm-proxy decides from the headers
alone that an exchange is not sampled, the SDK's propagators and sampler drop it too."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from asm_proxy import observe, tracing
from asm_proxy.loader import load_text
from asm_proxy.observe import StreamEnd
from asm_proxy.stream import Stream
from asm_proxy.testing import messages
from asm_proxy.trace_headers import parent_declined

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
SAMPLER = ParentBased(TraceIdRatioBased(0.5))


def sdk_drops(carrier: dict[str, str]) -> bool:
    """What the SDK decides: the default propagators, then the ParentBased sampler."""
    from opentelemetry import trace

    parent = tracing.default_propagator().extract(carrier)
    span = trace.get_current_span(parent).get_span_context()
    if not span.is_valid:
        return False  # a root: the ratio decides, not the headers
    result = SAMPLER.should_sample(parent, span.trace_id, "ext_proc")
    return result.decision is Decision.DROP


@pytest.mark.parametrize(
    ("carrier", "declined"),
    [
        ({"traceparent": f"00-{TRACE}-{SPAN}-00"}, True),
        ({"traceparent": f"00-{TRACE}-{SPAN}-01"}, False),
        ({"traceparent": f"00-{'0' * 32}-{SPAN}-00"}, False),  # invalid: not a parent
        ({"traceparent": f"00-{TRACE}-{SPAN}-00", "x-b3-traceid": TRACE}, True),
        ({"b3": f"{TRACE}-{SPAN}-0"}, True),
        ({"b3": f"{TRACE}-{SPAN}-1"}, False),
        ({"b3": "0"}, False),  # deny-only, no parent: the root sampler decides
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}, True),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}, False),
        (
            {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0", "x-b3-flags": "1"},
            False,
        ),
        ({"tracestate": "a=b"}, False),
    ],
)
def test_parent_declined(carrier: dict[str, str], declined: bool) -> None:
    assert parent_declined(carrier) is declined
    if declined:
        assert sdk_drops(carrier)


HEX = "0123456789abcdef"
header_values = st.one_of(
    st.builds(
        lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
        st.sampled_from(["00", "01", "ff", "0"]),
        st.sampled_from([TRACE, "0" * 32, TRACE[:30], TRACE.upper(), "x" * 32]),
        st.sampled_from([SPAN, "0" * 16, SPAN[:15]]),
        st.sampled_from(["00", "01", "02", "03", "zz", "0"]),
    ),
    st.text(alphabet=HEX + "-xz", max_size=60),
)
b3_values = st.one_of(
    st.builds(
        lambda t, s, f: f"{t}-{s}-{f}",
        st.sampled_from([TRACE, TRACE[16:], "0" * 32]),
        st.sampled_from([SPAN, "0" * 16]),
        st.sampled_from(["0", "1", "d", "2"]),
    ),
    st.sampled_from(["0", "1", "d", ""]),
)


@given(
    traceparent=st.none() | header_values,
    b3=st.none() | b3_values,
    trace_id=st.none() | st.sampled_from([TRACE, TRACE[16:], "0" * 32, "nothex"]),
    sampled=st.none() | st.sampled_from(["0", "1", "true", "false", "x"]),
    flags=st.none() | st.sampled_from(["0", "1"]),
)
def test_declined_only_when_the_sdk_drops(
    traceparent: str | None,
    b3: str | None,
    trace_id: str | None,
    sampled: str | None,
    flags: str | None,
) -> None:
    """Whatever mix of headers arrives: a shortcut 'not sampled' is always the SDK's answer."""
    carrier = {
        k: v
        for k, v in {
            "traceparent": traceparent,
            "b3": b3,
            "x-b3-traceid": trace_id,
            "x-b3-spanid": SPAN if trace_id else None,
            "x-b3-sampled": sampled,
            "x-b3-flags": flags,
        }.items()
        if v is not None
    }
    if parent_declined(carrier):
        assert sdk_drops(carrier), carrier


def test_which_samplers_allow_the_shortcuts() -> None:
    assert tracing.roots_dropped(ParentBased(TraceIdRatioBased(0)))
    assert tracing.roots_dropped(ALWAYS_OFF)
    assert not tracing.roots_dropped(ParentBased(TraceIdRatioBased(0.01)))
    assert not tracing.roots_dropped(ParentBased(ALWAYS_ON))
    assert tracing.follows_unsampled_parents(ParentBased(ALWAYS_ON))
    assert not tracing.follows_unsampled_parents(
        ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    )
    assert not tracing.follows_unsampled_parents(TraceIdRatioBased(1.0))


def test_environment() -> None:
    """No exporter named: no tracing. An unknown one: an error naming it."""
    assert tracing.from_environment({}) is None
    assert tracing.from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        tracing.from_environment({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
        is None
    )
    with pytest.raises(tracing.TracingConfigError, match="no exporter 'zipkin'"):
        tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingConfigError, match="protocol"):
        tracing.from_environment(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )
    made = tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert made is not None and isinstance(made.provider, TracerProvider)
    assert made.provider.resource.attributes["service.name"] == "asm-proxy"
    made.provider.shutdown()


@given(
    trace_id=st.integers(0, 2**128 - 1),
    rate=st.sampled_from([0.0, 1e-9, 0.01, 0.5, 0.999, 1.0]),
    parent_based=st.booleans(),
)
def test_the_ratio_shortcut_is_the_samplers_answer(
    trace_id: int, rate: float, parent_based: bool
) -> None:
    """A root's fate read off its trace id, as TraceIdRatioBased itself reads it."""
    sampler = ParentBased(TraceIdRatioBased(rate)) if parent_based else TraceIdRatioBased(rate)
    ratio = tracing.root_ratio(sampler)
    assert ratio is not None
    sdk = sampler.should_sample(None, trace_id, "ext_proc").decision is Decision.RECORD_AND_SAMPLE
    assert (trace_id & ratio.TRACE_ID_LIMIT < ratio.bound) is sdk
    assert tracing.root_ratio(ParentBased(ALWAYS_ON)) is None


CONFIG = """
plugins:
  - name: tag
    type: headers
    config: {request: {set: {x-tag: '1'}}}
"""


Traced = tuple[bool, bool, list[str]]


def traced(sampler: Sampler, headers: list[tuple[str, str]], wire: bool = True) -> Traced:
    """One exchange through Stream.handle with tracing from `sampler` installed: whether
    it got a trace, whether it got its own hook observers, the names of the spans made."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(tracing.Tracing(provider))
    loaded = load_text("t.yaml", CONFIG)
    msg = messages.request_headers([(":path", "/"), *headers], True)

    async def main() -> Traced:
        stream = Stream(loaded.chain, loaded.settings)
        await stream.handle(msg, msg.SerializeToString() if wire else None)
        x = stream.exchange
        assert x is not None
        seen = (x.trace is not None, x.observers is not observe.observers)
        if x.trace is not None:
            observe.trace_ended(x, StreamEnd.COMPLETE)
        return (*seen, [span.name for span in exporter.get_finished_spans()])

    try:
        return asyncio.run(main())
    finally:
        tracing.install(None)
        provider.shutdown()


@pytest.mark.parametrize("wire", [True, False])
def test_only_a_sampled_exchange_gets_a_trace_and_hook_spans(wire: bool) -> None:
    unsampled = [("traceparent", f"00-{TRACE}-{SPAN}-00")]
    sampled = [("traceparent", f"00-{TRACE}-{SPAN}-01")]
    ratio0 = ParentBased(TraceIdRatioBased(0.0))
    assert traced(ratio0, unsampled, wire) == (False, False, [])
    assert traced(ratio0, [], wire) == (False, False, [])
    assert traced(ParentBased(ALWAYS_ON), unsampled, wire) == (False, False, [])
    assert traced(ratio0, sampled, wire) == (True, True, ["tag request_headers", "ext_proc"])
    # No parent: the root sampler decides (always on: traced; the ratio: by the id).
    assert traced(ParentBased(ALWAYS_ON), [], wire)[0]
    assert traced(TraceIdRatioBased(1.0), [], wire)[0]
