"""headers: set, append, add-if-absent and remove request and response headers.

    - name: tenant-header
      type: headers
      config:
        request:
          set: {x-tenant: blue}
          remove: [x-debug]
        response:
          append: {cache-control: no-store}

Per direction the changes apply in this order: remove, set, append, addIfAbsent. Setting
`:authority` or `:path` makes Envoy route the request again.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from asm_proxy.api import ROUTING_HEADERS, Event, Headers, Http, Plugin, PluginConfig


def _check_names(names: list[str]) -> list[str]:
    out = []
    for name in names:
        probe = Headers()
        probe.set(name, "")  # raises ValueError with the reason for a bad name
        out.append(name.lower())
    return out


class HeaderChanges(PluginConfig):
    set: dict[str, str] = Field(default_factory=dict)
    append: dict[str, str | list[str]] = Field(default_factory=dict)
    add_if_absent: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("remove")
    @classmethod
    def _remove_names(cls, value: list[str]) -> list[str]:
        return _check_names(value)

    @field_validator("set", "append", "add_if_absent")
    @classmethod
    def _valid(cls, value: dict[str, object]) -> dict[str, object]:
        probe = Headers()
        for name, values in value.items():
            for item in values if isinstance(values, list) else [values]:
                assert isinstance(item, str)
                probe.append(name, item)  # raises ValueError naming the bad name or value
        return {k.lower(): v for k, v in value.items()}

    def operations(self) -> list[tuple[str, str, str]]:
        ops = [("remove", name, "") for name in self.remove]
        ops += [("set", name, value) for name, value in self.set.items()]
        for name, values in self.append.items():
            ops += [("append", name, v) for v in (values if isinstance(values, list) else [values])]
        ops += [("add_if_absent", name, value) for name, value in self.add_if_absent.items()]
        return ops


class HeadersConfig(PluginConfig):
    request: HeaderChanges = Field(default_factory=HeaderChanges)
    response: HeaderChanges = Field(default_factory=HeaderChanges)


def _apply(headers: Headers, ops: list[tuple[str, str, str]]) -> None:
    for op, name, value in ops:
        if op == "remove":
            headers.remove(name)
        elif op == "set":
            headers.set(name, value)
        elif op == "append":
            headers.append(name, value)
        else:
            headers.add_if_absent(name, value)


class HeadersPlugin(Plugin):
    """Static header changes."""

    Config = HeadersConfig

    def __init__(self, config: HeadersConfig) -> None:
        super().__init__(config)
        self.request_ops = config.request.operations()
        self.response_ops = config.response.operations()
        # Run (and make Envoy send) only the phases this config changes.
        wanted = {
            Event.REQUEST_HEADERS: self.request_ops,
            Event.RESPONSE_HEADERS: self.response_ops,
        }
        self.hooks = frozenset(event for event, ops in wanted.items() if ops)
        # Envoy must allow it to change where the request goes.
        self.changes_routing = any(name in ROUTING_HEADERS for _, name, _ in self.request_ops)

    def on_request_headers(self, http: Http) -> None:
        _apply(http.request.headers, self.request_ops)

    def on_response_headers(self, http: Http) -> None:
        _apply(http.response.headers, self.response_ops)
