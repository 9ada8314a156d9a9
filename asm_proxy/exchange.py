"""One HTTP exchange: the server's `Exchange` state and the `Http` view plugins get.

`Exchange` holds what the server keeps per exchange (the two `Direction`s, the undo log,
metadata and route-cache intents not yet sent, which plugins said they are done, their
state slots, the running plugin). `Http`, `Request` and `Response` are what a plugin
holds: they read the exchange and record intents, and offer nothing else. Attributes and
metadata arrive from Envoy as protobuf Structs and are converted only if a plugin reads
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from asm_proxy import observe
from asm_proxy.body import Body
from asm_proxy.direction import Direction
from asm_proxy.events import Side
from asm_proxy.headers import Headers, record_into
from asm_proxy.hosts import split_host_port
from asm_proxy.identity import UNKNOWN, Workload, from_attributes, identity_conflict
from asm_proxy.undo import UndoLog

if TYPE_CHECKING:
    from asm_proxy.plugin import Plugin

LazyMap = Callable[[], dict[str, Any]]
#: take_metadata()'s answer when there is none (never changed by callers).
_NO_METADATA: dict[str | None, dict[str, Any]] = {}

_SIDES: tuple[Side, ...] = ("request", "response")


class Exchange:
    """The server's state of one exchange (one ext_proc stream or one Check call).

    Most of it is empty for most exchanges, so the defaults are class attributes and the
    containers are made on first use: starting an exchange sets five fields."""

    _attribute_sources: list[LazyMap] | None = None
    _attributes: dict[str, Any] | None = None
    _metadata_source: LazyMap | None = None
    _metadata: dict[str, Any] | None = None
    _peer: Workload | None = None
    _workload: Workload | None = None
    #: Dynamic metadata set since the last reply, by namespace (None: the server's).
    metadata_out: dict[str | None, dict[str, Any]] | None = None
    route_cache = False
    #: Each plugin's `http.state`, by id(plugin).
    slots: dict[int, Any] | None = None
    #: The plugin whose hook is running (for `http.state` and `http.done()`).
    current: Plugin | None = None
    #: (id(plugin), side) for each side a plugin said it needs no more of.
    done: set[tuple[int, Side]] | None = None
    #: The status asm-proxy answered the client with itself (an immediate response, an
    #: ext_authz denial), 0 if none: for metrics, traces and logs.
    immediate_status = 0
    #: Told about each hook call of this exchange: the process-wide observers, unless
    #: the exchange was given its own list (a traced one: the tracer's added).
    observers: list[observe.HookObserver] = observe.observers
    #: The exchange's trace, if the tracer decided to trace it (`observe.trace`).
    trace: observe.ExchangeTrace | None = None

    def __init__(
        self, request_headers: Headers | None = None, *, peer: Workload | None = None
    ) -> None:
        undo = UndoLog()
        self.undo = undo
        self.request = Direction("request", undo)
        self.response = Direction("response", undo)
        if request_headers is not None:
            record_into(request_headers, undo)
            self.request.headers = request_headers
        if peer is not None:
            self._peer = peer
        self.http = Http(self)

    # -- what Envoy sent ------------------------------------------------------------

    def add_attributes(self, source: LazyMap) -> None:
        if self._attribute_sources is None:
            self._attribute_sources = []
        self._attribute_sources.append(source)

    def set_metadata_source(self, source: LazyMap) -> None:
        self._metadata_source = source
        self._metadata = None

    def attributes(self) -> Mapping[str, Any]:
        if self._attribute_sources:
            merged = dict(self._attributes or {})
            for source in self._attribute_sources:
                merged.update(source())
            self._attribute_sources.clear()
            self._attributes = merged
            self._workload = None
        return self._attributes or {}

    def metadata(self) -> Mapping[str, Any]:
        if self._metadata_source is not None:
            self._metadata = self._metadata_source()
            self._metadata_source = None
        return self._metadata or {}

    def identity_conflict(self) -> str | None:
        """Why the proven peer and Envoy's node metadata disagree on the workload's
        namespace, or None when they do not (or either is silent)."""
        return identity_conflict(self.attributes(), self._peer)

    def workload(self) -> Workload:
        if self._workload is None:
            attributes = self.attributes()
            peer = self._peer
            self._workload = from_attributes(attributes, peer) if attributes or peer else UNKNOWN
        return self._workload

    # -- what plugins asked for, taken by the reply that carries it -------------------

    def take_metadata(self) -> dict[str | None, dict[str, Any]]:
        out = self.metadata_out
        if not out:
            return _NO_METADATA
        self.metadata_out = None
        return {ns: values for ns, values in out.items() if values}

    def take_route_cache(self) -> bool:
        flag = self.route_cache
        self.route_cache = False
        return flag

    def is_done(self, plugin: Plugin, side: Side) -> bool:
        done = self.done
        return done is not None and (id(plugin), side) in done


class Message:
    """One side of the exchange as a plugin sees it: headers, body and trailers."""

    __slots__ = ("_body", "_d")

    def __init__(self, direction: Direction) -> None:
        self._d = direction
        self._body: Body | None = None

    @property
    def headers(self) -> Headers:
        headers = self._d.headers
        return headers if headers is not None else self._d.headers_view()

    @property
    def body(self) -> Body:
        body = self._body
        if body is None:
            d = self._d
            body = self._body = Body(d.buffer(), d.undo)
        return body

    @property
    def trailers(self) -> Headers:
        trailers = self._d.trailers
        return trailers if trailers is not None else self._d.trailers_view()


class Request(Message):
    """The request as Envoy has it now, including changes made by earlier plugins."""

    __slots__ = ("_path_of", "_path_only")

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
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


class Http:
    """One HTTP exchange as plugins see it."""

    __slots__ = ("_response", "_x", "request")

    def __init__(self, exchange: Exchange) -> None:
        self._x = exchange
        self.request = Request(exchange.request)
        self._response: Response | None = None

    @property
    def response(self) -> Response:
        """The response (made on first use: most plugins never look at it)."""
        response = self._response
        if response is None:
            response = self._response = Response(self._x.response)
        return response

    # -- what Envoy told us ------------------------------------------------------

    @property
    def attributes(self) -> Mapping[str, Any]:
        """Envoy attributes asked for in the filter's request/response_attributes,
        by name: {"source.address": "10.0.0.7:51234", "request.path": "/x", ...}."""
        return self._x.attributes()

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Envoy dynamic metadata forwarded to us, by namespace (metadata_context)."""
        return self._x.metadata()

    @property
    def workload(self) -> Workload:
        """The calling workload, from what Envoy proves (see asm_proxy.identity)."""
        return self._x.workload()

    # -- per-plugin state ----------------------------------------------------------

    @property
    def state(self) -> Any:
        """The running plugin's own slot for this exchange (made by its `new_state()`)."""
        x = self._x
        plugin = x.current
        if plugin is None:
            raise RuntimeError("http.state is only available inside a plugin hook")
        key = id(plugin)
        slots = x.slots
        if slots is None:
            slots = x.slots = {}
        try:
            return slots[key]
        except KeyError:
            value = slots[key] = plugin.new_state()
            return value

    @state.setter
    def state(self, value: Any) -> None:
        x = self._x
        if x.current is None:
            raise RuntimeError("http.state is only available inside a plugin hook")
        if x.slots is None:
            x.slots = {}
        x.slots[id(x.current)] = value

    def done(self, direction: Side | None = None) -> None:
        """The running plugin needs no more hooks on this exchange, or none more on its
        "request" or "response" side; phases nobody else needs are then skipped (Envoy is
        told through mode_override at the next headers reply)."""
        if direction not in (None, "request", "response"):
            raise ValueError(
                f"http.done(): direction must be 'request' or 'response', not {direction!r}"
            )
        x = self._x
        if x.current is not None:
            key = id(x.current)
            if x.done is None:
                x.done = set()
            for side in (direction,) if direction else _SIDES:
                x.done.add((key, side))

    # -- intents -------------------------------------------------------------------

    def set_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        """Emit dynamic metadata `key: value` (JSON-like value) under the server's
        namespace, or under `namespace` if given; Envoy's access log can print it."""
        x = self._x
        if x.metadata_out is None:
            x.metadata_out = {}
        bucket = x.metadata_out.setdefault(namespace, {})
        missing = object()
        old = bucket.get(key, missing)

        def restore() -> None:
            if old is missing:
                bucket.pop(key, None)
            else:
                bucket[key] = old

        x.undo.record(restore)
        bucket[key] = value

    def clear_route_cache(self) -> None:
        """Make Envoy pick the route again after this message (automatic when :authority,
        :path or host change; call it when a route matches on another header you set)."""
        x = self._x
        if not x.route_cache:
            x.undo.record(_unset_route_cache(x))
        x.route_cache = True


def _unset_route_cache(x: Exchange) -> Callable[[], None]:
    def unset() -> None:
        x.route_cache = False

    return unset
