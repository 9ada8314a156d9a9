"""The plugin contract: one class with a typed config and only the hooks it needs.

    class AddTenant(Plugin):
        class Config(PluginConfig):
            tenant: str

        def on_request_headers(self, http: Http) -> Respond | None:
            http.request.headers.set("x-tenant", self.config.tenant)
            return None

A hook is any of the `on_*` methods in HOOKS, plain or `async`. It returns None to carry
on or a `Respond` to answer the client now (which stops the chain). A plugin never sees
protobuf or the gRPC stream; everything it changes goes through the `Http` view.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


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


HOOKS: tuple[str, ...] = (
    "on_request_headers",
    "on_request_body",
    "on_request_body_chunk",
    "on_request_trailers",
    "on_response_headers",
    "on_response_body",
    "on_response_body_chunk",
    "on_response_trailers",
)


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


class Plugin:
    """Base class of every plugin. Subclasses set `Config` and define the hooks they need.

    The framework builds one instance per configured plugin (at load or reload), sets
    `name` and `log`, awaits `start()`, and awaits `close()` once no stream uses it any more.
    Do the expensive work (compile patterns, build maps, load keys) in `__init__`.
    """

    Config: ClassVar[type[PluginConfig]] = PluginConfig

    #: The hooks this plugin runs. Filled from the methods the class defines; an instance
    #: may narrow it in __init__ (a config that needs no response hook should not make
    #: Envoy send the response).
    hooks: frozenset[str] = frozenset()
    async_hooks: frozenset[str] = frozenset()

    #: True for a plugin that decides who gets in (authentication, authorization): a
    #: failure under FAIL_OPEN lets the request through unchecked, so such an entry draws a
    #: warning from `validate` and at every load. Not refused: it can be a deliberate choice.
    guards_access: ClassVar[bool] = False

    name: str = ""
    log: logging.Logger = logging.getLogger("asm_proxy.plugin")

    def __init__(self, config: Any) -> None:
        self.config = config

    def _bind_name(self, name: str) -> None:
        """Give the instance its configured name and a logger of that name."""
        self.name = name
        self.log = logging.getLogger(f"asm_proxy.plugin.{name}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = {hook for hook in HOOKS if callable(getattr(cls, hook, None))}
        cls.hooks = frozenset(found)
        cls.async_hooks = frozenset(
            hook for hook in found if inspect.iscoroutinefunction(getattr(cls, hook))
        )
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, PluginConfig)):
            raise TypeError(f"{cls.__name__}.Config must be a subclass of PluginConfig")

    def body_access(self, direction: str) -> BodyAccess:
        """What this plugin needs of the `request` or `response` body."""
        if f"on_{direction}_body" in self.hooks:
            return BodyAccess.WHOLE
        if f"on_{direction}_body_chunk" in self.hooks:
            return BodyAccess.CHUNKS
        return BodyAccess.NONE

    def new_state(self) -> Any:
        """The per-exchange state slot this plugin reads as `http.state` (None by default)."""
        return None

    async def start(self) -> None:
        """Called once before the plugin serves traffic (open clients, start refreshers)."""

    async def close(self) -> None:
        """Called once after the last stream using this instance has finished."""
