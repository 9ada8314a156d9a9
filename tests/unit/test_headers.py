"""Headers: a case-insensitive multimap that records the smallest set of operations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asm_proxy import codec
from asm_proxy.headers import HeaderAction, Headers, take_ops
from asm_proxy.testing import apply_header_mutation
from asm_proxy.undo import UndoLog


class TestReading:
    def test_lookup_ignores_case(self) -> None:
        """Envoy sends lower-case names; plugins may ask in any case."""
        h = Headers([("content-type", "text/plain")])
        assert h.get("Content-Type") == "text/plain"
        assert "CONTENT-TYPE" in h
        assert h["content-type"] == "text/plain"

    def test_multiple_values_keep_order(self) -> None:
        """A repeated header keeps every value, in order; get() is the first."""
        h = Headers([("x-a", "1"), ("x-b", "2"), ("x-a", "3")])
        assert h.get_all("x-a") == ["1", "3"]
        assert h.get("x-a") == "1"
        assert list(h.items()) == [("x-a", "1"), ("x-a", "3"), ("x-b", "2")]

    def test_missing(self) -> None:
        """Absent names read as None / [] / KeyError."""
        h = Headers()
        assert h.get("x") is None
        assert h.get("x", "d") == "d"
        assert h.get_all("x") == []
        with pytest.raises(KeyError):
            h["x"]


class TestChanging:
    def test_set_replaces_all_values(self) -> None:
        """set() leaves exactly one value and records one overwrite."""
        h = Headers([("x-a", "1"), ("x-a", "2")])
        h.set("X-A", "3")
        assert h.get_all("x-a") == ["3"]
        assert take_ops(h) == {"x-a": [(HeaderAction.SET, "3")]}

    def test_append_then_remove_is_a_remove(self) -> None:
        """Later operations on a name supersede earlier ones."""
        h = Headers([("x-a", "1")])
        h.append("x-a", "2")
        h.remove("x-a")
        assert "x-a" not in h
        assert take_ops(h) == {"x-a": [(HeaderAction.REMOVE, "")]}

    def test_remove_then_append_is_a_set(self) -> None:
        """Removing then adding is an overwrite, which Envoy applies in one step."""
        h = Headers([("x-a", "1")])
        h.remove("x-a")
        h.append("x-a", "2")
        assert take_ops(h) == {"x-a": [(HeaderAction.SET, "2")]}

    def test_add_if_absent(self) -> None:
        """add_if_absent only adds to a name with no value, and lets Envoy decide too."""
        h = Headers([("x-a", "1")])
        assert h.add_if_absent("x-a", "2") is False
        assert h.add_if_absent("x-b", "2") is True
        assert take_ops(h) == {"x-b": [(HeaderAction.ADD_IF_ABSENT, "2")]}

    def test_take_ops_starts_afresh(self) -> None:
        """Operations are handed over once, then the record is empty."""
        h = Headers()
        h.set("x", "1")
        assert take_ops(h)
        assert take_ops(h) == {}
        assert h.get("x") == "1"

    @pytest.mark.parametrize("value", ["a\r\nb", "a\nb", "a\x00b"])
    def test_refuses_header_injection(self, value: str) -> None:
        """CR, LF and NUL in a value are refused, not forwarded."""
        with pytest.raises(ValueError, match="forbidden"):
            Headers().set("x-a", value)

    @pytest.mark.parametrize("name", ["", "bad name", "a:b", ":"])
    def test_refuses_bad_names(self, name: str) -> None:
        """Names with spaces, colons (outside pseudo-headers) or nothing are refused."""
        with pytest.raises(ValueError):
            Headers().set(name, "v")

    def test_pseudo_headers_allowed(self) -> None:
        """:path and :authority can be set."""
        h = Headers()
        h.set(":path", "/x")
        assert h.get(":path") == "/x"


class TestUndo:
    def test_rollback_restores_values_and_ops(self) -> None:
        """Rolling back to a mark restores the map and the recorded operations."""
        undo = UndoLog()
        h = Headers([("x-a", "1")], undo=undo)
        h.set("x-b", "first")
        mark = undo.mark()
        h.set("x-a", "2")
        h.remove("x-b")
        h.append("x-c", "3")
        undo.rollback(mark)
        assert h.get_all("x-a") == ["1"]
        assert h.get("x-b") == "first"
        assert "x-c" not in h
        assert take_ops(h) == {"x-b": [(HeaderAction.SET, "first")]}


names = st.sampled_from(["x-a", "x-b", "X-A", "content-type", ":path"])
values = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=8,
)
operations = st.lists(
    st.tuples(st.sampled_from(["set", "append", "add_if_absent", "remove"]), names, values),
    max_size=12,
)
initial = st.lists(
    st.tuples(st.sampled_from(["x-a", "x-b", "content-type", ":path"]), values), max_size=5
)


@given(initial, operations)
def test_mutation_reproduces_the_view(
    start: list[tuple[str, str]], ops: list[tuple[str, str, str]]
) -> None:
    """Whatever plugins do, Envoy applying the emitted mutation ends with the same headers."""
    h = Headers(start)
    for op, name, value in ops:
        if op == "remove":
            h.remove(name)
        else:
            getattr(h, op)(name, value)
    mutation = codec.header_mutation(take_ops(h))
    envoy_side = apply_header_mutation(list(start), mutation)

    def grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in pairs:
            out.setdefault(k, []).append(v)
        return out

    assert grouped(envoy_side) == grouped(list(h.items()))


@given(initial, operations)
def test_rollback_is_exact(start: list[tuple[str, str]], ops: list[tuple[str, str, str]]) -> None:
    """Rolling back everything returns to the starting headers with nothing to send."""
    undo = UndoLog()
    h = Headers(start, undo=undo)
    before = list(h.items())
    for op, name, value in ops:
        if op == "remove":
            h.remove(name)
        else:
            getattr(h, op)(name, value)
    undo.rollback(0)
    assert sorted(h.items()) == sorted(before)
    for name in {k for k, _ in before}:
        assert h.get_all(name) == [v for k, v in before if k == name]
    assert take_ops(h) == {}
