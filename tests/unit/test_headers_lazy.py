"""Headers wrapping Envoy's HeaderMap are decoded on the first read; changes made before
that behave exactly like changes to decoded headers, undo included."""

from __future__ import annotations

from asm_proxy.codec import header_map_of
from asm_proxy.headers import HeaderAction, Headers, from_envoy, take_ops
from asm_proxy.undo import UndoLog

RAW = header_map_of([(":path", "/a"), ("x-a", "1"), ("x-b", "2"), ("x-b", "3")])


def lazy() -> tuple[Headers, UndoLog]:
    undo = UndoLog()
    return from_envoy(RAW, undo), undo


class TestLazyHeaders:
    def test_set_then_read(self) -> None:
        """A header set before decoding wins over Envoy's value; the rest decode as sent."""
        headers, _ = lazy()
        headers.set("x-a", "new")
        headers.set_all("x-c", ["4", "5"])
        assert headers._m is None  # nothing read yet: nothing decoded
        assert headers.get("x-a") == "new"
        assert headers.get_all("x-b") == ["2", "3"]
        assert headers.get_all("x-c") == ["4", "5"]
        assert take_ops(headers) == {
            "x-a": [(HeaderAction.SET, "new")],
            "x-c": [(HeaderAction.SET, "4"), (HeaderAction.APPEND, "5")],
        }

    def test_undo_before_any_read(self) -> None:
        """Undoing a change made before decoding leaves Envoy's values and no operation."""
        headers, undo = lazy()
        headers.set("x-a", "first")
        mark = undo.mark()
        headers.set("x-a", "second")
        headers.set("x-new", "v")
        undo.rollback(mark)
        assert take_ops(headers) == {"x-a": [(HeaderAction.SET, "first")]}
        assert headers.get("x-a") == "first"
        assert "x-new" not in headers

    def test_undo_after_a_read(self) -> None:
        """A hook that set a header, read another (decoding the map) and then failed:
        the rollback puts Envoy's original value back."""
        headers, undo = lazy()
        mark = undo.mark()
        headers.set("x-b", "changed")
        headers.set("x-new", "v")
        assert headers.get(":path") == "/a"  # decodes
        undo.rollback(mark)
        assert headers.get_all("x-b") == ["2", "3"]
        assert "x-new" not in headers
        assert take_ops(headers) == {}

    def test_reads_and_other_changes_decode_first(self) -> None:
        """append, add_if_absent and remove need the current values: they decode first."""
        headers, _ = lazy()
        headers.append("x-b", "4")
        assert headers.get_all("x-b") == ["2", "3", "4"]
        assert headers.add_if_absent("x-a", "no") is False
        assert headers.remove("x-a") is True
        assert dict(headers.to_dict()) == {":path": "/a", "x-b": "2, 3, 4"}
