"""gRPC message reassembly across arbitrary body chunk splits (discovery.grpc_frames)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from asm_proxy_handlers.discovery.grpc_frames import PEEK_LIMIT, MessageStream, frame


class Upper:
    """Wants messages starting with b"w" (None until a byte is there); rewrites them upper."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.rewritten: list[bytes] = []

    def wants(self, start: bytes) -> bool | None:
        self.asked.append(start)
        return None if not start else start[:1] == b"w"

    def rewrite(self, message: bytes) -> bytes | None:
        self.rewritten.append(message)
        if message[:1] != b"w" or message.endswith(b"!"):
            return None  # "cannot rewrite this one": it goes on as it came
        return message.upper() + b"+"


def expected(messages: list[bytes]) -> bytes:
    out = b""
    for m in messages:
        if m[:1] == b"w" and not m.endswith(b"!"):
            out += frame(m.upper() + b"+")
        else:
            out += frame(m)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def run(stream: MessageStream, pieces: list[bytes]) -> bytes:
    out = b""
    for piece in pieces:
        got = stream.feed(piece)
        out += piece if got is None else got
    return out


message = st.binary(max_size=64).map(lambda b: b.replace(b"w", b"x")) | st.binary(max_size=64).map(
    lambda b: b"w" + b
)


@settings(max_examples=300)
@given(st.lists(message, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_gives_the_same_stream(messages: list[bytes], cuts: list[int]) -> None:
    """However Envoy cuts the body, the bytes sent on are the messages, rewritten where
    wanted, each with a prefix that fits; nothing is held at the end."""
    data = b"".join(frame(m) for m in messages)
    stream = MessageStream(Upper(), limit=1 << 20)
    assert run(stream, split(data, cuts)) == expected(messages)
    assert stream.pending == 0
    assert stream.counts["messages"] == len(messages)


@given(st.lists(st.binary(max_size=40).map(lambda b: b"x" + b), min_size=1, max_size=5))
def test_unwanted_messages_go_on_at_once(messages: list[bytes]) -> None:
    """A message of no interest is never held: byte by byte, every byte after the first
    of its body goes on with the chunk it came in (only the 5-byte prefix and the byte
    that tells are waited for)."""
    data = b"".join(frame(m) for m in messages)
    stream = MessageStream(Upper(), limit=1 << 20)
    sent = b""
    for i in range(len(data)):
        got = stream.feed(data[i : i + 1])
        sent += data[i : i + 1] if got is None else got
        assert stream.pending <= 5
    assert sent == data


def test_untouched_chunks_are_not_copied() -> None:
    """A chunk of whole messages nobody rewrites comes back as None: send it as it is."""
    data = frame(b"xyz") + frame(b"w!") + frame(b"")
    assert MessageStream(Upper(), limit=100).feed(data) is None


def test_compressed_and_large_messages_pass_unread() -> None:
    handler = Upper()
    stream = MessageStream(handler, limit=10)
    data = frame(b"wcompressed", compressed=True) + frame(b"w" * 11) + frame(b"wok")
    assert run(stream, split(data, [3, 9, 20])) == data[:-8] + frame(b"WOK+")
    assert stream.counts["compressed"] == 1
    assert stream.counts["too_large"] == 1
    assert handler.rewritten == [b"wok"]


def test_a_prefix_that_is_not_grpc_ends_the_reading() -> None:
    """A flag byte other than 0 or 1: everything from there passes as it is, counted."""
    stream = MessageStream(Upper(), limit=100)
    data = frame(b"wa") + b"\x07garbage" + frame(b"wb")
    assert run(stream, split(data, [4, 12])) == frame(b"WA+") + data[len(frame(b"wa")) :]
    assert stream.counts["not_grpc"] == 1


def test_undecided_message_is_held_whole_and_bounded() -> None:
    """A handler that cannot tell from the start gets the whole message (held, once)."""

    class Unsure(Upper):
        def wants(self, start: bytes) -> bool | None:
            return None

    handler = Unsure()
    stream = MessageStream(handler, limit=1 << 20)
    body = b"w" * (PEEK_LIMIT * 3)
    data = frame(body)
    pieces = split(data, list(range(0, len(data), 1000)))
    out = b""
    for piece in pieces[:-1]:
        got = stream.feed(piece)
        out += piece if got is None else got
    assert out == b""  # held until complete
    assert stream.pending == len(data) - len(pieces[-1])
    out += stream.feed(pieces[-1]) or b""
    assert out == frame(body.upper() + b"+")


def test_flush_returns_the_cut_off_message() -> None:
    stream = MessageStream(Upper(), limit=100)
    data = frame(b"whole")[:-2]
    assert stream.feed(data) == b""
    assert stream.flush() == data
    assert stream.pending == 0
    assert stream.feed(b"more") is None  # past a cut-off message, nothing is parsed
