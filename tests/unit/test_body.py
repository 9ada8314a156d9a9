"""Bodies: chunks kept as received, joined at most once."""

from __future__ import annotations

from asm_proxy.body import Body, BodyBuffer, Chunk
from asm_proxy.stats import counters
from asm_proxy.undo import UndoLog


def body_of(*chunks: bytes, undo: UndoLog | None = None) -> Body:
    """A plugin's Body over a buffer the server filled with `chunks`."""
    buffer = BodyBuffer()
    for chunk in chunks:
        buffer.add(chunk)
    return Body(buffer, undo)


def test_single_chunk_is_not_copied() -> None:
    """One chunk is returned as is: no join, no copy."""
    chunk = b"x" * 1000
    body = body_of(chunk)
    before = counters.body_bytes_joined
    assert body.data is chunk
    assert counters.body_bytes_joined == before


def test_join_happens_once() -> None:
    """Several chunks are joined on the first read only; the copy is counted."""
    body = body_of(b"ab", b"cd", b"ef")
    before = counters.body_bytes_joined
    first = body.data
    second = body.data
    assert first == b"abcdef"
    assert first is second
    assert counters.body_bytes_joined - before == 6
    assert body.chunks == (b"abcdef",)  # one object kept, not two


def test_size_needs_no_join() -> None:
    """Sizes come from the chunk lengths."""
    body = body_of(b"abc", b"de")
    before = counters.body_bytes_joined
    assert body.size == 5
    assert counters.body_bytes_joined == before


def test_replace_and_undo() -> None:
    """A replacement is what later readers see; undo takes it back."""
    undo = UndoLog()
    body = body_of(b"old", undo=undo)
    body.replace("new ✓")
    assert body.data == "new ✓".encode()
    assert body.size == len("new ✓".encode())
    assert body.received_size == 3
    undo.rollback(0)
    assert not body.replaced
    assert body.data == b"old"


def test_chunk_replace() -> None:
    """A chunk replaced is what the next chunk hook sees."""
    undo = UndoLog()
    chunk = Chunk(b"abc", False, undo)
    chunk.replace(b"ABC")
    assert chunk.data == b"ABC" and chunk.replaced
    undo.rollback(0)
    assert chunk.data == b"abc" and not chunk.replaced
