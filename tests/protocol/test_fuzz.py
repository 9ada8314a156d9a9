"""Hypothesis-generated message sequences: no crash, no stream left without its reply."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asm_proxy.stream import ProtocolError
from asm_proxy.testing import PluginHost, messages
from asm_proxy.wire import BodySendMode

CHAIN = """
plugins:
  - {name: rec, type: 'tests.support.plugins:Recorder', phase: AUTHN}
  - {name: chunks, type: 'tests.support.plugins:ChunkUpper'}
  - {name: upper, type: 'tests.support.plugins:UpperBody', match: [{paths: [{prefix: /body}]}]}
  - {name: trailers, type: 'tests.support.plugins:TrailerTouch'}
  - {name: meta, type: 'tests.support.plugins:SetMetadata', config: {values: {a: b}}}
  - {name: raiser, type: 'tests.support.plugins:Raiser', failStrategy: FAIL_OPEN,
     match: [{headers: [{name: x-raise, present: true}]}]}
  - {name: gate, type: 'tests.support.plugins:Gate', match: [{paths: [{prefix: /gate}]}]}
"""

headers = st.lists(
    st.tuples(
        st.sampled_from(["x-a", "x-raise", "content-length", "content-type", "x-allow"]),
        st.text(alphabet="abc123 ", max_size=5),
    ),
    max_size=4,
)
paths = st.sampled_from(["/", "/body/x", "/gate", "/other?q=1"])
bodies = st.binary(max_size=40)


@st.composite
def message(draw: Any, observability: bool) -> Any:
    kind = draw(
        st.sampled_from(
            [
                "request_headers",
                "response_headers",
                "request_body",
                "response_body",
                "request_trailers",
                "response_trailers",
                "empty",
            ]
        )
    )
    eos = draw(st.booleans())
    if kind == "request_headers":
        pairs = [(":method", "POST"), (":path", draw(paths)), (":authority", "x"), *draw(headers)]
        return messages.request_headers(pairs, eos, observability=observability)
    if kind == "response_headers":
        return messages.response_headers(
            [(":status", "200"), *draw(headers)], eos, observability=observability
        )
    if kind.endswith("_body"):
        return getattr(messages, kind)(draw(bodies), eos, observability=observability)
    if kind.endswith("_trailers"):
        return getattr(messages, kind)(draw(headers), observability=observability)
    from asm_proxy.wire import ext_proc

    return ext_proc.ProcessingRequest()


modes = st.sampled_from([int(m) for m in BodySendMode.values() if m != BodySendMode.GRPC])


@st.composite
def exchange(draw: Any) -> tuple[dict[str, Any], list[Any], bool]:
    observability = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else False
    protocol = {
        "request_body_mode": draw(modes),
        "response_body_mode": draw(modes),
        "send_body_without_waiting_for_header_response": draw(st.booleans()),
    }
    msgs = draw(st.lists(message(observability), min_size=1, max_size=10))
    return protocol, msgs, observability


HOST = PluginHost.from_yaml(CHAIN)


@settings(max_examples=300)
@given(exchange())
def test_every_message_is_answered_or_refused(case: tuple[dict[str, Any], list[Any], bool]) -> None:
    """Each message gets its one reply (several or none only where the protocol allows),
    or the stream ends with a ProtocolError that says what was wrong."""
    protocol, msgs, observability = case
    HOST.protocol = protocol
    HOST.new_exchange()
    duplex = BodySendMode.FULL_DUPLEX_STREAMED in (
        protocol["request_body_mode"],
        protocol["response_body_mode"],
    )
    finished = False
    for msg in msgs:
        sent = msg.WhichOneof("request")
        try:
            steps = HOST.send(msg)
        except ProtocolError as err:
            assert err.message
            return
        if observability:
            assert steps == []
            continue
        if finished:
            assert [s.kind for s in steps] in ([sent], [])
            continue
        if any(s.kind == "immediate_response" for s in steps):
            assert steps[-1].kind == "immediate_response"
            finished = True
            continue
        if duplex:
            assert all(s.kind in (sent, "request_body", "response_body") for s in steps)
            if not sent.endswith("_body"):
                assert steps and steps[-1].kind == sent
        else:
            assert [s.kind for s in steps] == [sent]
