"""gRPC messages reassembled from HTTP/2 body chunks, one direction of one stream at a time.

A gRPC body is a sequence of messages, each a 5-byte prefix (compressed flag, 4-byte
big-endian length) and that many bytes; Envoy hands them over in chunks cut anywhere. A
`MessageStream` takes the chunks as they come and gives back the bytes to send on:

- a message the handler does not want passes as its bytes arrive: once its first bytes tell
  the handler it is of no interest (`wants` answers False), nothing of it is held;
- a message the handler wants (or cannot judge from its start) is held until complete, then
  sent as the handler rewrote it (with a new prefix) or as it came;
- compressed messages, messages over `limit` bytes and a prefix that is not gRPC's pass
  unchanged, counted in `counts` (and told to `report`, to count over many streams).

Memory per stream is one message at most (bounded by `limit`), however long the stream
lives; the stream itself is never joined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

PREFIX = 5
#: Bytes of a message's start after which `wants` is not asked again (the message is held).
PEEK_LIMIT = 4096

_HEADER, _BODY, _PASS, _OPAQUE = range(4)


class MessageHandler(Protocol):
    def wants(self, start: bytes) -> bool | None:
        """Whether a message starting with these bytes may be rewritten: True (hold it),
        False (pass it on as it comes), None (cannot tell yet)."""

    def rewrite(self, message: bytes) -> bytes | None:
        """The message to send instead of `message`, or None to send it as it came."""


class MessageStream:
    """Incremental gRPC message reassembly with rewrite (see the module doc)."""

    __slots__ = (
        "_decided",
        "_handler",
        "_held",
        "_held_size",
        "_prefix",
        "_remaining",
        "_state",
        "counts",
        "limit",
        "report",
    )

    def __init__(
        self, handler: MessageHandler, limit: int, report: Callable[[str], None] | None = None
    ) -> None:
        self._handler = handler
        self.limit = limit
        self._state = _HEADER
        self._prefix = b""  # the part of a message prefix received so far
        self._held: list[bytes] = []  # prefix and body pieces of the message held
        self._held_size = 0
        self._remaining = 0  # bytes of the current message still to come
        self._decided = False
        #: messages seen, and those passed without a look: compressed, too_large, not_grpc
        #: (this stream's; `report` hears of each too).
        self.counts: Counter[str] = Counter()
        self.report = report

    @property
    def pending(self) -> int:
        """Bytes received and not sent on yet (part of a message)."""
        return len(self._prefix) + self._held_size

    def feed(self, data: bytes) -> bytes | None:
        """The bytes to send on in place of `data`; None when that is `data` itself."""
        held_before = self.pending
        out: list[bytes] = []
        rewritten = False
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _OPAQUE:
                out.append(data[pos:] if pos else data)
                pos = end
            elif state == _PASS:
                take = min(self._remaining, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _HEADER
            elif state == _HEADER:
                take = min(PREFIX - len(self._prefix), end - pos)
                self._prefix += data[pos : pos + take]
                pos += take
                if len(self._prefix) == PREFIX:
                    self._start(out)
            else:  # _BODY
                take = min(self._remaining, end - pos)
                piece = data[pos : pos + take]
                pos += take
                self._remaining -= take
                self._held.append(piece)
                self._held_size += take
                if not self._decided:
                    self._decide(out)
                if self._state == _BODY and not self._remaining:
                    rewritten = self._finish(out) or rewritten
        if not rewritten and not held_before and not self.pending:
            return None  # every byte went on as it came, in place
        return b"".join(out)

    def flush(self) -> bytes:
        """What is held, as it came (the stream ended inside a message)."""
        held = self._prefix + b"".join(self._held)
        self._prefix, self._held, self._held_size = b"", [], 0
        self._state = _OPAQUE if held else self._state
        return held

    # -- steps ---------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        if self.report is not None:
            self.report(what)

    def _start(self, out: list[bytes]) -> None:
        prefix = self._prefix
        self._prefix = b""
        flag = prefix[0]
        length = int.from_bytes(prefix[1:5], "big")
        self._count("messages")
        if flag > 1:
            # Not a gRPC message prefix: nothing after it can be trusted to be one either.
            self._count("not_grpc")
            out.append(prefix)
            self._state = _OPAQUE
            return
        if flag == 1 or length > self.limit:
            self._count("compressed" if flag == 1 else "too_large")
            out.append(prefix)
            self._remaining = length
            self._state = _PASS if length else _HEADER
            return
        self._held = [prefix]
        self._held_size = PREFIX
        self._remaining = length
        self._decided = False
        self._state = _BODY
        if not length:
            self._decide(out)
            if self._state == _BODY:
                self._finish(out)

    def _decide(self, out: list[bytes]) -> None:
        start = b"".join(self._held[1:])
        wanted = self._handler.wants(start)
        if wanted is None and len(start) < PEEK_LIMIT and self._remaining:
            return
        self._decided = True
        if wanted is False:
            out.extend(self._held)
            self._held, self._held_size = [], 0
            self._state = _PASS if self._remaining else _HEADER

    def _finish(self, out: list[bytes]) -> bool:
        held = self._held
        self._held, self._held_size = [], 0
        self._state = _HEADER
        message = b"".join(held[1:])
        new = self._handler.rewrite(message)
        if new is None:
            out.extend(held)
            return False
        out.append(b"\x00" + len(new).to_bytes(4, "big"))
        out.append(new)
        return True


def frame(message: bytes, compressed: bool = False) -> bytes:
    """One gRPC message with its prefix."""
    return (b"\x01" if compressed else b"\x00") + len(message).to_bytes(4, "big") + message
