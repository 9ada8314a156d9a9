"""The plugin contract: one class with a typed config and only the hooks it needs.

    class AddTenant(Plugin):
        class Config(PluginConfig):
            tenant: str

        def on_request_headers(self, http: Http) -> Respond | None:
            http.request.headers.set("x-tenant", self.config.tenant)
            return None

A hook is a method named after an `Event` (`on_request_headers`, ...; see HOOKS), plain or
`async`. It returns None to carry on or a `Respond` to answer the client now (which stops
the chain). A plugin never sees protobuf or the gRPC stream; everything it changes goes
through the `Http` view.

Hooks are checked when the class is defined: a method whose name starts with `on_` must be
a hook, and take the hook's arguments, or the class is refused naming the method.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from asm_proxy.events import BY_HOOK, Event, Side, body_of, chunk_of
from asm_proxy.logs import log_decision
from asm_proxy.metrics.declared import Counter, Declared, Gauge, Histogram

if TYPE_CHECKING:
    from asm_proxy.exchange import Http

D = TypeVar("D", bound=Declared[Any])

#: Every hook method name, in the order Envoy sends the events of each side.
HOOKS: tuple[str, ...] = tuple(e.hook for e in Event)


class Phase(enum.IntEnum):
    """Where in the chain a plugin runs (Istio WasmPlugin phases, in their filter order)."""

    AUTHN = 0
    AUTHZ = 1
    STATS = 2
    UNSPECIFIED = 3


class FailStrategy(enum.Enum):
    """What a failed or overrunning hook costs: the request (FAIL_CLOSE) or the plugin."""

    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"


class BodyAccess(enum.Enum):
    """How a plugin wants a direction's body delivered; derived from the hooks it defines."""

    NONE = 0
    CHUNKS = 1  # on_*_body_chunk only: each chunk as it passes (STREAMED is enough)
    WHOLE = 2  # on_*_body: the complete body at once (BUFFERED)


class PluginConfig(BaseModel):
    """Base of every plugin's config: frozen, unknown keys refused, camelCase or snake_case."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client now with this response; no later plugin runs for the message."""

    status: int
    body: bytes | str = b""
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()
    details: str = ""  # reaches Envoy's %RESPONSE_CODE_DETAILS%
    grpc_status: int | None = None

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"Respond: status {self.status} is not a final HTTP status")

    def header_pairs(self) -> list[tuple[str, str]]:
        items = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        return [(str(k).lower(), str(v)) for k, v in items]

    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8") if isinstance(self.body, str) else bytes(self.body)


class PluginDefinitionError(TypeError):
    """A plugin class (or instance) that cannot work as written: the message names it."""


class Plugin:
    """Base class of every plugin. Subclasses set `Config` and define the hooks they need.

    The framework builds one instance per configured plugin (at load or reload), sets
    `name` and `log`, awaits `start()`, and awaits `close()` once no stream uses it any more.
    Do the expensive work (compile patterns, build maps, load keys) in `__init__`.
    """

    Config: ClassVar[type[PluginConfig]] = PluginConfig

    #: The events this plugin handles. Filled from the hook methods the class defines; an
    #: instance may narrow it in __init__ (a config that needs no response hook should not
    #: make Envoy send the response): `self.hooks = frozenset({Event.REQUEST_HEADERS})`.
    hooks: frozenset[Event] = frozenset()
    async_hooks: frozenset[Event] = frozenset()

    #: True for a plugin that decides who gets in (authentication, authorization): a
    #: failure under FAIL_OPEN lets the request through unchecked, so such an entry draws a
    #: warning from `validate` and at every load. Not refused: it can be a deliberate choice.
    guards_access: ClassVar[bool] = False

    #: What the plugin needs of Envoy's filter config beyond its hooks (`asm-proxy render`
    #: derives the config from these, `diagnose` checks one): True if it changes
    #: :authority, :path or host (Envoy must allow it: mutation_rules.allow_all_routing);
    #: the dynamic metadata namespaces it writes besides the server's own; the Envoy
    #: attributes it reads through `http.attributes`. An instance may set them in __init__.
    changes_routing: bool = False
    metadata_namespaces: frozenset[str] = frozenset()
    request_attributes: frozenset[str] = frozenset()
    #: The largest body a whole-body hook must see complete (0: no claim); `diagnose`
    #: warns when Envoy's buffer limit is below it (Envoy answers 413 past its limit).
    body_bytes: int = 0

    name: str = ""
    log: logging.Logger = logging.getLogger("asm_proxy.plugin")
    #: The metrics this instance declared (`counter()`, `gauge()`, `histogram()`).
    declared_metrics: tuple[Declared[Any], ...] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, PluginConfig)):
            raise PluginDefinitionError(
                f"{_qualname(cls)}.Config must be a subclass of PluginConfig"
            )
        found: set[Event] = set()
        for name, fn in _hook_like_methods(cls):
            event = BY_HOOK.get(name)
            if event is None:
                raise PluginDefinitionError(_not_a_hook(cls, name))
            _check_signature(cls, name, fn, event)
            found.add(event)
        cls.hooks = frozenset(found)
        cls.async_hooks = frozenset(
            e for e in found if inspect.iscoroutinefunction(getattr(cls, e.hook))
        )

    def body_access(self, side: Side) -> BodyAccess:
        """What this plugin needs of the `request` or `response` body."""
        if body_of(side) in self.hooks:
            return BodyAccess.WHOLE
        if chunk_of(side) in self.hooks:
            return BodyAccess.CHUNKS
        return BodyAccess.NONE

    # -- metrics: declared in __init__, bound to the plugin's name when the chain starts ----

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """Declare a counter, exposed as `asm_proxy_plugin_<name>` with the labels `plugin`
        and `type` before `labels` (the name ends in `_total`). Call in `__init__`."""
        return self._declare(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        """Declare a gauge (summed over a server's workers when scraped)."""
        return self._declare(Gauge(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """Declare a histogram (default buckets: 50 µs to 10 s, for durations in seconds)."""
        return self._declare(Histogram(name, help, labels, buckets))

    def _declare(self, metric: D) -> D:
        if any(m.name == metric.name for m in self.declared_metrics):
            raise ValueError(f"{_qualname(type(self))}: metric {metric.name} declared twice")
        self.declared_metrics = (*self.declared_metrics, metric)
        return metric

    # -- decision logs ---------------------------------------------------------------

    def log_decision(
        self,
        http: Http,
        *,
        allowed: bool,
        reason: str,
        status: int = 0,
        dry_run: bool = False,
        **details: str | int | bool | None,
    ) -> None:
        """Log this exchange's access decision (a plugin that `guards_access`), as OPA's
        decision logs: logger `asm_proxy.decision`, event "decision", with the verdict,
        `reason` (a fixed word, such as `jwt_expired`), the status answered, the request's
        method, authority and path (no query), and `details` (consumer, credential kind:
        never a credential). The server's `decisionLog` setting says which are written:
        all, deny (the default) or none."""
        log_decision(
            self.name,
            http,
            allowed=allowed,
            reason=reason,
            status=status or (200 if allowed else 403),
            dry_run=dry_run,
            details=details,
        )

    def new_state(self) -> Any:
        """The per-exchange state slot this plugin reads as `http.state` (None by default)."""
        return None

    async def start(self) -> None:
        """Called once before the plugin serves traffic (open clients, start refreshers)."""

    async def close(self) -> None:
        """Called once after the last stream using this instance has finished."""


def prepare(plugin: Plugin, name: str) -> None:
    """Give a constructed plugin its configured name and logger, and check what its
    `__init__` did to `hooks`: only events its class has methods for."""
    cls = type(plugin)
    hooks = plugin.hooks
    if not isinstance(hooks, frozenset | set) or not all(isinstance(e, Event) for e in hooks):
        raise PluginDefinitionError(
            f"{_qualname(cls)}: self.hooks must be a set of Event members "
            f"(e.g. frozenset({{Event.REQUEST_HEADERS}})), not {hooks!r}"
        )
    extra = set(hooks) - cls.hooks
    if extra:
        missing = ", ".join(sorted(e.hook for e in extra))
        raise PluginDefinitionError(
            f"{_qualname(cls)}: self.hooks names {missing}, which the class does not define"
        )
    plugin.hooks = frozenset(hooks)
    plugin.async_hooks = frozenset(
        e for e in plugin.hooks if inspect.iscoroutinefunction(getattr(plugin, e.hook))
    )
    plugin.name = name
    plugin.log = logging.getLogger(f"asm_proxy.plugin.{name}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _hook_like_methods(cls: type) -> list[tuple[str, Any]]:
    """The methods named `on_*` that `cls` and its bases (below Plugin) define."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is Plugin or klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("on_") and name not in found:
                fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                if callable(fn):
                    found[name] = fn
    return sorted(found.items())


def _not_a_hook(cls: type, name: str) -> str:
    close = difflib.get_close_matches(name, HOOKS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"{_qualname(cls)}.{name} is not a hook{hint}. A method named on_* must be one of: "
        f"{', '.join(HOOKS)}"
    )


def _check_signature(cls: type, name: str, fn: Any, event: Event) -> None:
    """The hook is called as fn(self, http) or, for chunks, fn(self, http, chunk)."""
    wanted = 3 if event.takes_chunk else 2
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a callable without an introspectable signature: it is called as documented
    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    keyword_required = [
        p
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if len(required) <= wanted and (len(positional) >= wanted or varargs) and not keyword_required:
        return
    call = "(self, http, chunk)" if event.takes_chunk else "(self, http)"
    bare = signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in params],
        return_annotation=inspect.Signature.empty,
    )
    raise PluginDefinitionError(
        f"{_qualname(cls)}.{name}{bare} does not fit the hook: it is called as {name}{call}"
    )
