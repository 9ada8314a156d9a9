"""A case-insensitive header multimap that remembers what plugins changed.

Envoy sends header names lower-cased, so the map is keyed by lower-case names and a
lookup lower-cases only the name it is given. Values are `str` (decoded losslessly from
the bytes Envoy sent). Every change is also recorded as an operation per header name, so
the server can answer Envoy with the smallest HeaderMutation that has the same effect,
and (through the undo log) a failed plugin's changes can be taken back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

from asm_proxy.envoy_headers import EnvoyHeaderMap, decode_header_map
from asm_proxy.undo import UndoLog


class HeaderAction(enum.IntEnum):
    """What one recorded operation does; mirrors Envoy's HeaderAppendAction plus removal."""

    SET = 0  # replace every value (OVERWRITE_IF_EXISTS_OR_ADD)
    APPEND = 1  # add one more value (APPEND_IF_EXISTS_OR_ADD)
    ADD_IF_ABSENT = 2  # add only if the name is not present (ADD_IF_ABSENT)
    REMOVE = 3  # remove every value


HeaderOp = tuple[HeaderAction, str]

#: Header names whose change makes Envoy pick the route again (and which Envoy lets an
#: external processor change only with mutation_rules.allow_all_routing).
ROUTING_HEADERS = frozenset({":authority", ":path", "host", ":method", ":scheme"})

_FORBIDDEN_VALUE_CHARS = ("\r", "\n", "\x00")


def _check_value(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"header {name!r}: value must be str, not {type(value).__name__}")
    for ch in _FORBIDDEN_VALUE_CHARS:
        if ch in value:
            raise ValueError(f"header {name!r}: value contains a forbidden character {ch!r}")
    return value


def _check_name(name: str) -> str:
    if not name or name == ":":
        raise ValueError("header name must not be empty")
    lowered = name.lower()
    body = lowered[1:] if lowered[0] == ":" else lowered  # pseudo-headers such as :path
    for ch in (" ", "\t", "\r", "\n", "\x00", ":"):
        if ch in body:
            raise ValueError(f"header name {name!r} contains a forbidden character {ch!r}")
    return lowered


class Headers:
    """Header multimap: `get`/`get_all`/`in` to read; `set`/`append`/`add_if_absent`/`remove`
    to change. Reads see every earlier change, including other plugins' changes."""

    __slots__ = ("_m", "_ops", "_pending", "_raw", "_undo")

    def __init__(
        self,
        items: Iterable[tuple[str, str]] = (),
        *,
        undo: UndoLog | None = None,
    ) -> None:
        m: dict[str, list[str]] = {}
        self._m: dict[str, list[str]] | None = m
        self._raw: EnvoyHeaderMap | None = None
        self._pending: dict[str, list[str]] | None = None
        self._ops: dict[str, list[HeaderOp]] = {}
        self._undo = undo
        for key, value in items:
            values = m.get(key)
            if values is None:
                m[key] = [value]
            else:
                values.append(value)

    @property
    def _map(self) -> dict[str, list[str]]:
        m = self._m
        if m is None:
            assert self._raw is not None
            m = decode_header_map(self._raw)
            if self._pending:
                for key, values in self._pending.items():
                    m[key] = values
            self._m, self._pending = m, None
        return m

    def _raw_values(self, key: str) -> list[str] | None:
        """`key`'s values as Envoy sent them (to undo a change made before decoding)."""
        return decode_header_map(self._raw).get(key) if self._raw is not None else None

    # -- reading ---------------------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        m = self._m if self._m is not None else self._map
        values = m.get(name) or m.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order (a copy)."""
        m = self._map
        values = m.get(name) or m.get(name.lower())
        return list(values) if values else []

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        m = self._map
        return name in m or name.lower() in m

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._map))

    def __len__(self) -> int:
        return len(self._map)

    def keys(self) -> list[str]:
        return list(self._map)

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (name, value) pair; a name with two values appears twice."""
        for key, values in list(self._map.items()):
            for value in values:
                yield key, value

    def to_dict(self) -> dict[str, str]:
        """{name: values joined by ", "}: for logging and for ext_authz-style single values."""
        return {key: ", ".join(values) for key, values in self._map.items()}

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._map == other._map
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # -- changing --------------------------------------------------------------

    def set(self, name: str, value: str) -> None:
        """Replace every value of `name` with `value`."""
        key = _check_name(name)
        _check_value(key, value)
        if self._m is None:
            self._set_undecoded(key, [value])
        else:
            self._save(key)
            self._m[key] = [value]
        self._ops[key] = [(HeaderAction.SET, value)]

    __setitem__ = set

    def set_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every value of `name` with `values` (removes it when `values` is empty)."""
        key = _check_name(name)
        new = [_check_value(key, v) for v in values]
        if not new:
            self.remove(key)
            return
        if self._m is None:
            self._set_undecoded(key, new)
        else:
            self._save(key)
            self._m[key] = new
        ops: list[HeaderOp] = [(HeaderAction.SET, new[0])]
        ops.extend((HeaderAction.APPEND, v) for v in new[1:])
        self._ops[key] = ops

    def append(self, name: str, value: str) -> None:
        """Add one more value to `name` (adds the header if absent)."""
        key = _check_name(name)
        _check_value(key, value)
        self._save(key)
        self._map.setdefault(key, []).append(value)
        ops = self._ops.get(key)
        if ops == [(HeaderAction.REMOVE, "")]:
            self._ops[key] = [(HeaderAction.SET, value)]
        elif ops is None:
            self._ops[key] = [(HeaderAction.APPEND, value)]
        else:
            ops.append((HeaderAction.APPEND, value))

    def add_if_absent(self, name: str, value: str) -> bool:
        """Set `name` only if it has no value; returns whether it was added."""
        key = _check_name(name)
        _check_value(key, value)
        if self._map.get(key):
            return False
        self._save(key)
        self._map[key] = [value]
        ops = self._ops.get(key)
        if ops == [(HeaderAction.REMOVE, "")]:
            self._ops[key] = [(HeaderAction.SET, value)]
        elif ops is None:
            # Envoy may hold values we were not sent (forward_rules), so let it decide.
            self._ops[key] = [(HeaderAction.ADD_IF_ABSENT, value)]
        else:
            ops.append((HeaderAction.ADD_IF_ABSENT, value))
        return True

    setdefault = add_if_absent

    def remove(self, name: str) -> bool:
        """Remove every value of `name`; returns whether it was present."""
        key = _check_name(name)
        present = key in self._map
        self._save(key)
        self._map.pop(key, None)
        self._ops[key] = [(HeaderAction.REMOVE, "")]
        return present

    def __delitem__(self, name: str) -> None:
        if not self.remove(name):
            raise KeyError(name)

    def _set_undecoded(self, key: str, values: list[str]) -> None:
        """Replace `key`'s values before anything was decoded: kept aside, applied when the
        map is decoded."""
        pending = self._pending
        if pending is None:
            pending = self._pending = {}
        undo = self._undo
        if undo is not None:
            old_values = pending.get(key)
            old_ops = self._ops.get(key)
            old_ops = list(old_ops) if old_ops is not None else None

            def restore() -> None:
                if self._m is None:
                    assert self._pending is not None
                    if old_values is None:
                        self._pending.pop(key, None)
                    else:
                        self._pending[key] = old_values
                else:  # decoded since: put back what was there before
                    before = old_values if old_values is not None else self._raw_values(key)
                    if before is None:
                        self._m.pop(key, None)
                    else:
                        self._m[key] = before
                if old_ops is None:
                    self._ops.pop(key, None)
                else:
                    self._ops[key] = old_ops

            undo.record(restore)
        pending[key] = values

    def _save(self, key: str) -> None:
        undo = self._undo
        if undo is None:
            return
        old_values = self._map.get(key)
        old_values = list(old_values) if old_values is not None else None
        old_ops = self._ops.get(key)
        old_ops = list(old_ops) if old_ops is not None else None

        def restore() -> None:
            if old_values is None:
                self._map.pop(key, None)
            else:
                self._map[key] = old_values
            if old_ops is None:
                self._ops.pop(key, None)
            else:
                self._ops[key] = old_ops

        undo.record(restore)


# -- for the server: not methods, so a plugin's Headers offers only the plugin API --------


def _made(
    m: dict[str, list[str]] | None, raw: EnvoyHeaderMap | None, undo: UndoLog | None
) -> Headers:
    headers = Headers.__new__(Headers)
    headers._m = m
    headers._raw = raw
    headers._pending = None
    headers._ops = {}
    headers._undo = undo
    return headers


def from_envoy(header_map: EnvoyHeaderMap, undo: UndoLog | None) -> Headers:
    """Wrap Envoy's HeaderMap, decoded on the first read: a plugin that only sets headers
    never pays for decoding the others."""
    return _made(None, header_map, undo)


def adopt(mapping: dict[str, list[str]], undo: UndoLog | None) -> Headers:
    """Wrap an already-built {lower-case name: values} dict without copying it."""
    return _made(mapping, None, undo)


def record_into(headers: Headers, undo: UndoLog) -> None:
    """Make `headers` record how to undo its changes in `undo` (headers built before the
    exchange they belong to, as in ext_authz and tests)."""
    headers._undo = undo


def checked_pair(name: str, value: str) -> tuple[str, str]:
    """(lower-case name, value) if a plugin could set them through Headers, else ValueError
    naming them: for headers that never went through Headers (a Respond's)."""
    key = _check_name(name)
    return key, _check_value(key, value)


def take_ops(headers: Headers) -> dict[str, list[HeaderOp]]:
    """Hand over the operations recorded since the last call and start afresh."""
    ops = headers._ops
    if ops:
        headers._ops = {}
    return ops


def pending_names(headers: Headers) -> tuple[str, ...]:
    """The names with operations recorded since the last take_ops (without taking them)."""
    return tuple(headers._ops)


def media_type(content_type: str | None) -> str:
    """The media type of a content-type value: lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()
