"""`Http`: what a plugin sees of one HTTP exchange (one ext_proc stream or one Check call).

Plugins read and change the request and response through it; the server turns the
changes into one ProcessingResponse per message. Attributes and metadata arrive from
Envoy as protobuf Structs and are converted only if a plugin reads them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from asm_proxy.body import Body
from asm_proxy.headers import HeaderOp, Headers
from asm_proxy.identity import UNKNOWN, Workload
from asm_proxy.undo import UndoLog

if TYPE_CHECKING:
    from asm_proxy.plugin import Plugin

#: Header names whose change makes Envoy pick the route again.
ROUTING_HEADERS = frozenset({":authority", ":path", "host", ":method", ":scheme"})


class Message:
    """One direction of the exchange: headers, body and trailers."""

    __slots__ = ("_body", "_headers", "_raw_headers", "_trailers", "_undo")

    def __init__(self, undo: UndoLog, headers: Headers | None = None) -> None:
        self._undo = undo
        self._headers = headers
        self._raw_headers: Any = None
        self._body: Body | None = None
        self._trailers: Headers | None = None

    @property
    def body(self) -> Body:
        body = self._body
        if body is None:
            body = self._body = Body(self._undo)
        return body

    @property
    def trailers(self) -> Headers:
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = Headers(undo=self._undo)
        return trailers

    @trailers.setter
    def trailers(self, value: Headers) -> None:
        self._trailers = value

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            # Decoded on first read: a phase no plugin looks at costs no decoding.
            raw, self._raw_headers = self._raw_headers, None
            undo = self._undo
            headers = Headers(undo=undo) if raw is None else Headers._lazy(raw, undo)
            self._headers = headers
        return headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers, self._raw_headers = value, None

    def _receive_headers(self, header_map: Any) -> None:
        """Take Envoy's HeaderMap as this message's headers (decoded when first read)."""
        self._headers, self._raw_headers = None, header_map

    def _take_header_ops(self) -> dict[str, list[HeaderOp]]:
        """The header changes recorded since the last call (none if nobody read them)."""
        headers = self._headers
        return headers.take_ops() if headers is not None else {}


class Request(Message):
    """The request as Envoy has it now, including changes made by earlier plugins."""

    __slots__ = ("_path_of", "_path_only")

    def __init__(self, undo: UndoLog, headers: Headers | None = None) -> None:
        super().__init__(undo, headers)
        self._path_of: str | None = None
        self._path_only = ""

    @property
    def method(self) -> str:
        return self.headers.get(":method") or ""

    @property
    def path(self) -> str:
        """The full :path, query string included."""
        return self.headers.get(":path") or ""

    @path.setter
    def path(self, value: str) -> None:
        self.headers.set(":path", value)

    @property
    def path_only(self) -> str:
        """:path without its query string."""
        path = self.path
        if path is self._path_of:  # every plugin's match asks: cut the query once
            return self._path_only
        cut = path.find("?")
        self._path_of, self._path_only = path, path if cut < 0 else path[:cut]
        return self._path_only

    @property
    def query(self) -> dict[str, str]:
        """The query parameters of :path (first value of each; values percent-decoded)."""
        path = self.path
        cut = path.find("?")
        if cut < 0:
            return {}
        result: dict[str, str] = {}
        for key, value in parse_qsl(path[cut + 1 :], keep_blank_values=True):
            result.setdefault(key, value)
        return result

    @property
    def authority(self) -> str:
        """:authority (the Host), port included if the client sent one."""
        return self.headers.get(":authority") or self.headers.get("host") or ""

    @authority.setter
    def authority(self, value: str) -> None:
        self.headers.set(":authority", value)

    @property
    def host(self) -> str:
        """:authority without the port."""
        return split_host_port(self.authority)[0]

    @property
    def scheme(self) -> str:
        return self.headers.get(":scheme") or ""


class Response(Message):
    """The upstream's response (or Envoy's local reply) on its way to the client."""

    __slots__ = ()

    @property
    def status(self) -> int:
        """The :status code, or 0 before response headers arrived."""
        value = self.headers.get(":status")
        try:
            return int(value) if value else 0
        except ValueError:
            return 0


def split_host_port(authority: str) -> tuple[str, str | None]:
    """("example.com", "8080") from "example.com:8080"; IPv6 literals keep their brackets off."""
    if authority.startswith("["):
        end = authority.find("]")
        if end > 0:
            rest = authority[end + 1 :]
            return authority[1:end], rest[1:] if rest.startswith(":") else None
        return authority, None
    head, sep, port = authority.rpartition(":")
    if sep and head and port.isdigit() and ":" not in head:
        return head, port
    return authority, None


_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def normalize_host(name: str) -> str | None:
    """`name` lower-cased without its trailing dot, or None if it is not a DNS host name
    (dot-separated labels of letters, digits, '-' and '_')."""
    host = name.strip().rstrip(".").lower()
    if not host or len(host) > 253:
        return None
    if not all(_HOST_LABEL.match(label) for label in host.split(".")):
        return None
    return host


LazyMap = Callable[[], dict[str, Any]]


class Http:
    """One HTTP exchange as plugins see it."""

    __slots__ = (
        "_attribute_sources",
        "_attributes",
        "_current",
        "_done",
        "_metadata",
        "_metadata_out",
        "_metadata_source",
        "_peer",
        "_route_cache",
        "_slots",
        "_workload",
        "request",
        "response",
        "undo",
    )

    def __init__(
        self,
        request_headers: Headers | None = None,
        *,
        peer: Workload | None = None,
    ) -> None:
        undo = UndoLog()
        self.undo = undo
        if request_headers is not None:
            request_headers._undo = undo
        self.request = Request(undo, request_headers)
        self.response = Response(undo)
        self._attribute_sources: list[LazyMap] = []
        self._attributes: dict[str, Any] | None = None
        self._metadata_source: LazyMap | None = None
        self._metadata: dict[str, Any] | None = None
        self._metadata_out: dict[str | None, dict[str, Any]] = {}
        self._peer = peer
        self._workload: Workload | None = None
        self._slots: dict[int, Any] = {}
        self._current: Plugin | None = None
        self._done: set[tuple[int, str]] = set()  # (plugin id, "request" | "response")
        self._route_cache = False

    # -- what Envoy told us ------------------------------------------------------

    @property
    def attributes(self) -> Mapping[str, Any]:
        """Envoy attributes asked for in the filter's request/response_attributes,
        by name: {"source.address": "10.0.0.7:51234", "request.path": "/x", ...}."""
        if self._attribute_sources:
            merged = dict(self._attributes or {})
            for source in self._attribute_sources:
                merged.update(source())
            self._attribute_sources.clear()
            self._attributes = merged
            self._workload = None
        return self._attributes or {}

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Envoy dynamic metadata forwarded to us, by namespace (metadata_context)."""
        if self._metadata_source is not None:
            self._metadata = self._metadata_source()
            self._metadata_source = None
        return self._metadata or {}

    @property
    def workload(self) -> Workload:
        """The calling workload, from what Envoy proves (see asm_proxy.identity)."""
        if self._workload is None:
            from asm_proxy.identity import from_attributes

            attributes = self.attributes
            self._workload = (
                from_attributes(attributes, self._peer) if attributes or self._peer else UNKNOWN
            )
        return self._workload

    # -- per-plugin state ----------------------------------------------------------

    @property
    def state(self) -> Any:
        """The running plugin's own slot for this exchange (made by its `new_state()`)."""
        plugin = self._current
        if plugin is None:
            raise RuntimeError("http.state is only available inside a plugin hook")
        key = id(plugin)
        try:
            return self._slots[key]
        except KeyError:
            value = self._slots[key] = plugin.new_state()
            return value

    @state.setter
    def state(self, value: Any) -> None:
        plugin = self._current
        if plugin is None:
            raise RuntimeError("http.state is only available inside a plugin hook")
        self._slots[id(plugin)] = value

    def done(self, direction: str | None = None) -> None:
        """The running plugin needs no more hooks on this exchange, or none more on its
        "request" or "response" side; phases nobody else needs are then skipped (Envoy is
        told through mode_override at the next headers reply)."""
        if direction not in (None, "request", "response"):
            raise ValueError(
                f"http.done(): direction must be 'request' or 'response', not {direction!r}"
            )
        if self._current is not None:
            key = id(self._current)
            for side in (direction,) if direction else ("request", "response"):
                self._done.add((key, side))

    # -- intents -------------------------------------------------------------------

    def set_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        """Emit dynamic metadata `key: value` (JSON-like value) under the server's
        namespace, or under `namespace` if given; Envoy's access log can print it."""
        bucket = self._metadata_out.setdefault(namespace, {})
        missing = object()
        old = bucket.get(key, missing)

        def restore() -> None:
            if old is missing:
                bucket.pop(key, None)
            else:
                bucket[key] = old

        self.undo.record(restore)
        bucket[key] = value

    def clear_route_cache(self) -> None:
        """Make Envoy pick the route again after this message (automatic when :authority,
        :path or host change; call it when a route matches on another header you set)."""
        if not self._route_cache:
            self.undo.record(self._unset_route_cache)
        self._route_cache = True

    def _unset_route_cache(self) -> None:
        self._route_cache = False

    # -- for the server ------------------------------------------------------------

    def add_attributes(self, source: LazyMap) -> None:
        self._attribute_sources.append(source)

    def set_metadata_source(self, source: LazyMap) -> None:
        self._metadata_source = source
        self._metadata = None

    def take_metadata(self) -> dict[str | None, dict[str, Any]]:
        out = self._metadata_out
        if out:
            self._metadata_out = {}
        return {ns: values for ns, values in out.items() if values}

    def take_route_cache(self) -> bool:
        flag = self._route_cache
        self._route_cache = False
        return flag

    def is_done(self, plugin: Plugin, direction: str) -> bool:
        return (id(plugin), direction) in self._done
