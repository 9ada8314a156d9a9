"""Bodies kept as the chunks Envoy sent, joined at most once and only when asked.

The server fills a `BodyBuffer` (one per direction of an exchange); plugins see it through
`Body`, which reads it and records a replacement, nothing more. A plugin that only looks at
the size, or at each chunk as it passes, never causes a copy. `Body.data` joins once and
caches; a body no plugin replaced goes back to Envoy as "continue", never re-sent.
"""

from __future__ import annotations

from asm_proxy.stats import counters
from asm_proxy.undo import UndoLog


def as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


class BodyBuffer:
    """The server's side of one direction's body: what arrived, and what replaces it.

    `complete` is False while chunks are still arriving and when Envoy sent only a prefix
    (BUFFERED_PARTIAL past its buffer limit).
    """

    __slots__ = ("chunks", "complete", "joined", "replacement", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.joined: bytes | None = None
        self.replacement: bytes | None = None
        self.size = 0
        self.complete = False

    def add(self, chunk: bytes) -> None:
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)
            self.joined = None

    def join(self) -> bytes:
        """The received body as one bytes object: joined once, cached after."""
        joined = self.joined
        if joined is None:
            chunks = self.chunks
            if not chunks:
                joined = b""
            elif len(chunks) == 1:
                joined = chunks[0]
            else:
                joined = b"".join(chunks)
                counters.body_bytes_joined += len(joined)
                # Keep one object, not two: later joins are free and memory is not doubled.
                self.chunks = [joined]
            self.joined = joined
        return joined


class Body:
    """One direction's body as a plugin sees it: the chunks received so far, and a
    replacement if a plugin set one.

    `complete` is False while chunks are still arriving and when Envoy sent only a prefix
    (BUFFERED_PARTIAL past its buffer limit): a plugin that needs the whole document should
    leave an incomplete body alone.
    """

    __slots__ = ("_buffer", "_undo")

    def __init__(self, buffer: BodyBuffer | None = None, undo: UndoLog | None = None) -> None:
        self._buffer = buffer if buffer is not None else BodyBuffer()
        self._undo = undo

    @property
    def complete(self) -> bool:
        return self._buffer.complete

    @property
    def size(self) -> int:
        """Length in bytes of the body as it stands (the replacement, if any)."""
        buffer = self._buffer
        if buffer.replacement is not None:
            return len(buffer.replacement)
        return buffer.size

    def __len__(self) -> int:
        return self.size

    @property
    def received_size(self) -> int:
        """Length in bytes of what Envoy sent, whatever plugins replaced it with."""
        return self._buffer.size

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The chunks as Envoy sent them (no copy)."""
        return tuple(self._buffer.chunks)

    @property
    def data(self) -> bytes:
        """The whole body as one bytes object: joined on first read, cached after."""
        buffer = self._buffer
        if buffer.replacement is not None:
            return buffer.replacement
        return buffer.join()

    def __bytes__(self) -> bytes:
        return self.data

    def replace(self, data: bytes | bytearray | memoryview | str) -> None:
        """Make `data` the body Envoy forwards (str is encoded as UTF-8)."""
        new = as_bytes(data)
        buffer = self._buffer
        if self._undo is not None:
            old = buffer.replacement

            def restore() -> None:
                buffer.replacement = old

            self._undo.record(restore)
        buffer.replacement = new

    def clear(self) -> None:
        """Forward an empty body."""
        self.replace(b"")

    @property
    def replaced(self) -> bool:
        return self._buffer.replacement is not None

    def __repr__(self) -> str:
        buffer = self._buffer
        state = "complete" if buffer.complete else "partial"
        new = buffer.replacement
        extra = f", replaced with {len(new)} bytes" if new is not None else ""
        return f"<Body {buffer.size} bytes in {len(buffer.chunks)} chunks, {state}{extra}>"


def buffer_of(body: Body) -> BodyBuffer:
    """The buffer behind a plugin's Body (for the offload pool, which copies chunks)."""
    return body._buffer


class Chunk:
    """One piece of a streamed body, for plugins that work chunk by chunk."""

    __slots__ = ("_replaced", "_undo", "data", "end_of_stream")

    def __init__(self, data: bytes, end_of_stream: bool, undo: UndoLog | None = None) -> None:
        self.data = data
        self.end_of_stream = end_of_stream
        self._replaced = False
        self._undo = undo

    def replace(self, data: bytes | bytearray | memoryview | str) -> None:
        """Forward `data` instead of this chunk (later chunk hooks see the new data)."""
        new = as_bytes(data)
        if self._undo is not None:
            old_data, old_replaced = self.data, self._replaced

            def restore() -> None:
                self.data, self._replaced = old_data, old_replaced

            self._undo.record(restore)
        self._replaced = True
        self.data = new

    @property
    def replaced(self) -> bool:
        return self._replaced

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        eos = ", end" if self.end_of_stream else ""
        return f"<Chunk {len(self.data)} bytes{eos}>"
