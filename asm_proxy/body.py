"""Bodies kept as the chunks Envoy sent, joined at most once and only when asked.

A plugin that only looks at the size, or at each chunk as it passes, never causes a copy.
`Body.data` joins once and caches; a body no plugin replaced goes back to Envoy as
"continue", never re-sent.
"""

from __future__ import annotations

from asm_proxy.stats import counters
from asm_proxy.undo import UndoLog


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


class Body:
    """One direction's body: the chunks received so far, and a replacement if a plugin set one.

    `complete` is False while chunks are still arriving and when Envoy sent only a prefix
    (BUFFERED_PARTIAL past its buffer limit): a plugin that needs the whole document should
    leave an incomplete body alone.
    """

    __slots__ = ("_chunks", "_joined", "_replacement", "_size", "_undo", "complete")

    def __init__(self, undo: UndoLog | None = None) -> None:
        self._chunks: list[bytes] = []
        self._joined: bytes | None = None
        self._replacement: bytes | None = None
        self._size = 0
        self._undo = undo
        self.complete = False

    # -- filled by the server ------------------------------------------------------

    def add_chunk(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._joined = None

    # -- for plugins ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """Length in bytes of the body as it stands (the replacement, if any)."""
        if self._replacement is not None:
            return len(self._replacement)
        return self._size

    def __len__(self) -> int:
        return self.size

    @property
    def received_size(self) -> int:
        """Length in bytes of what Envoy sent, whatever plugins replaced it with."""
        return self._size

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The chunks as Envoy sent them (no copy)."""
        return tuple(self._chunks)

    @property
    def data(self) -> bytes:
        """The whole body as one bytes object: joined on first read, cached after."""
        if self._replacement is not None:
            return self._replacement
        joined = self._joined
        if joined is None:
            chunks = self._chunks
            if not chunks:
                joined = b""
            elif len(chunks) == 1:
                joined = chunks[0]
            else:
                joined = b"".join(chunks)
                counters.body_bytes_joined += len(joined)
                # Keep one object, not two: later joins are free and memory is not doubled.
                self._chunks = [joined]
            self._joined = joined
        return joined

    def __bytes__(self) -> bytes:
        return self.data

    def replace(self, data: bytes | bytearray | memoryview | str) -> None:
        """Make `data` the body Envoy forwards (str is encoded as UTF-8)."""
        new = _as_bytes(data)
        old = self._replacement
        if self._undo is not None:

            def restore() -> None:
                self._replacement = old

            self._undo.record(restore)
        self._replacement = new

    def clear(self) -> None:
        """Forward an empty body."""
        self.replace(b"")

    @property
    def replaced(self) -> bool:
        return self._replacement is not None

    @property
    def replacement(self) -> bytes | None:
        return self._replacement

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        new = self._replacement
        extra = f", replaced with {len(new)} bytes" if new is not None else ""
        return f"<Body {self._size} bytes in {len(self._chunks)} chunks, {state}{extra}>"


class Chunk:
    """One piece of a streamed body, for plugins that work chunk by chunk."""

    __slots__ = ("_replacement", "_undo", "data", "end_of_stream")

    def __init__(self, data: bytes, end_of_stream: bool, undo: UndoLog | None = None) -> None:
        self.data = data
        self.end_of_stream = end_of_stream
        self._replacement: bytes | None = None
        self._undo = undo

    def replace(self, data: bytes | bytearray | memoryview | str) -> None:
        """Forward `data` instead of this chunk (later chunk hooks see the new data)."""
        new = _as_bytes(data)
        old_data, old_replacement = self.data, self._replacement
        if self._undo is not None:

            def restore() -> None:
                self.data, self._replacement = old_data, old_replacement

            self._undo.record(restore)
        self._replacement = new
        self.data = new

    @property
    def replaced(self) -> bool:
        return self._replacement is not None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        eos = ", end" if self.end_of_stream else ""
        return f"<Chunk {len(self.data)} bytes{eos}>"
