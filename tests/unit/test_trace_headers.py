"""Trace headers read off a serialized ProcessingRequest agree with the decoded headers:
whenever a byte reading (the C one, and Python's without it) answers NONE or DECLINED,
that is the answer tracing reaches by decoding Envoy's header list; anything either
cannot read exactly is OTHER, never a guess."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry import trace

from asm_proxy import trace_headers, tracing
from asm_proxy._trace_headers import verdict as compiled
from asm_proxy.direction import Direction
from asm_proxy.testing import messages
from asm_proxy.trace_headers import DECLINED, NONE, OTHER, parent_declined, verdict_of_bytes
from asm_proxy.undo import UndoLog
from asm_proxy.wire import ProcessingRequest

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
ENVOY = [
    (":method", "POST"),
    (":path", "/api/items"),
    (":authority", "shop.example"),
    ("x-request-id", "5f0c6b1e-9a1d-4f43-8d0e-b3b3b3b3b3b3"),  # "b3" in a value
    ("user-agent", "traceparent-curious/1.0"),  # "trace" in a value
]
READERS: dict[str, Callable[[bytes], int]] = {"c": compiled, "python": verdict_of_bytes}


def test_the_compiled_reader_is_the_one_used() -> None:
    """Built with the package (setup.py): tracing must not fall back silently."""
    assert trace_headers.verdict is compiled


def decoded(msg: ProcessingRequest) -> dict[str, str]:
    """What tracing reads without the bytes: the trace headers of the decoded list."""
    d = Direction("request", UndoLog())
    d.receive_headers(msg.request_headers.headers)
    return trace_headers.trace_headers(d)


def request(*pairs: tuple[str, str], attributes: dict[str, str] | None = None) -> bytes:
    return messages.request_headers([*ENVOY, *pairs], attributes=attributes).SerializeToString()


UNSAMPLED = ("traceparent", f"00-{TRACE}-{SPAN}-00")
SAMPLED = ("traceparent", f"00-{TRACE}-{SPAN}-01")
B3_MULTI = (("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0"))


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (request(), NONE),
        (request(("tracestate", "a=b"), ("x-b3-parentspanid", SPAN)), NONE),  # no parent
        (request(UNSAMPLED), DECLINED),
        (request(SAMPLED), OTHER),
        (request(UNSAMPLED, ("x-b3-sampled", "1")), DECLINED),  # traceparent decides
        (request(*B3_MULTI), DECLINED),
        (request(*B3_MULTI, ("x-b3-flags", "1")), OTHER),  # debug: sampled
        (request(("b3", f"{TRACE}-{SPAN}-0")), DECLINED),
        (request(("b3", f"{TRACE}-{SPAN}-0-{SPAN}")), DECLINED),
        (request(("b3", f"{TRACE}-{SPAN}-1")), OTHER),
        (request(("b3", "0")), OTHER),  # deny without a parent: the root sampler decides
        (request(("x-b3-sampled", "0")), OTHER),
        (request(("traceparent", f"00-{TRACE.upper()}-{SPAN}-00")), OTHER),
        (request(("traceparent", f"00-{'0' * 32}-{SPAN}-00")), OTHER),
        (request(("traceparent", f"00-{TRACE}-{SPAN}-+0")), OTHER),
        (request(UNSAMPLED, UNSAMPLED), OTHER),  # given twice
        # Only the request headers count: a "traceparent" in the attributes is not one.
        (request(attributes={"traceparent": UNSAMPLED[1], "b3": "0"}), NONE),
        (messages.response_headers([UNSAMPLED]).SerializeToString(), OTHER),
        (messages.request_body(b"\n\x0btraceparent", True).SerializeToString(), OTHER),
        (request(UNSAMPLED)[:-3], OTHER),  # cut short
        (b"", OTHER),
    ],
)
def test_verdicts(reader: Callable[[bytes], int], data: bytes, answer: int) -> None:
    assert reader(data) == answer


def test_a_value_field_instead_of_raw_value() -> None:
    """Envoy sends raw_value; an older client sends value: both read as decoded."""
    msg = messages.request_headers(ENVOY)
    entry = msg.request_headers.headers.headers.add()
    entry.key, entry.value = UNSAMPLED
    for reader in READERS.values():
        assert reader(msg.SerializeToString()) == DECLINED


NAMES = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"]
NAMES += ["x-b3-flags", "x-b3-parentspanid", "x-request-id", "b3x", "x-traceparent", "user-agent"]
# What Envoy can send in a header value: visible ASCII, space, tab and obs-text.
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF) | st.just("\t")
values = st.one_of(
    st.sampled_from(
        [
            f"00-{TRACE}-{SPAN}-00",
            f"00-{TRACE}-{SPAN}-01",
            f" 00-{TRACE}-{SPAN}-02 ",
            f"00-{TRACE}-{SPAN}-0A",
            f"{TRACE}-{SPAN}-0",
            f"{TRACE[16:]}-{SPAN}-0-x",
            TRACE,
            SPAN,
            "0",
            "1",
            "false",
            "b3",
            "traceparent",
        ]
    ),
    st.text(VALUE_CHARS, max_size=300),
)
headers = st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=12)


def has_parent(carrier: dict[str, str]) -> bool:
    context = tracing.default_propagator().extract(carrier)
    return trace.get_current_span(context).get_span_context().is_valid


@given(headers)
@example([UNSAMPLED, ("x-b3-sampled", "1")])
@example([("tracestate", "a=b"), ("user-agent", "b3")])
@example([("x-request-id", "a" * 200), UNSAMPLED])
@example([("traceparent", f"00-{TRACE}-{SPAN}-{'0' * 100}")])
def test_the_readers_agree_with_the_decoded_headers(pairs: list[tuple[str, str]]) -> None:
    msg = messages.request_headers([*ENVOY, *pairs])
    carrier = decoded(msg)
    answers = {name: reader(msg.SerializeToString()) for name, reader in READERS.items()}
    for answer in answers.values():
        if answer == NONE:
            assert not has_parent(carrier), carrier
        elif answer == DECLINED:
            assert parent_declined(carrier), carrier
    # Both read the same headers: they differ only where one of them gives up.
    assert answers["c"] == answers["python"] or OTHER in answers.values(), answers


@given(headers)
def test_decoded_and_raw_headers_give_the_same_carrier(pairs: list[tuple[str, str]]) -> None:
    """A check's headers (decoded) and a stream's (Envoy's list, not decoded) read alike:
    the same trace headers, with the same values when none is given twice."""
    msg = messages.request_headers([*ENVOY, *pairs])
    d = Direction("request", UndoLog())
    d.receive_headers(msg.request_headers.headers)
    raw = trace_headers.trace_headers(d)
    d.headers_view()  # decodes them
    assert d.headers is not None
    from_decoded = trace_headers.trace_headers(d)
    assert set(from_decoded) == set(raw)
    names = [name for name, _ in pairs]
    assert {k: v for k, v in from_decoded.items() if names.count(k) == 1} == {
        k: v for k, v in raw.items() if names.count(k) == 1
    }
