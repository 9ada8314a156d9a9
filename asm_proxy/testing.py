"""A test host: drive plugins through the real stream code, with Envoy's side simulated.

    host = PluginHost(HeadersPlugin, {"request": {"set": {"x-tenant": "blue"}}})
    step = host.request_headers({":path": "/api", "x-debug": "1"})
    assert step.headers["x-tenant"] == "blue"

Each call builds the ProcessingRequest Envoy would send, runs it through the same `Stream`
the server uses (no gRPC), and applies the reply the way Envoy would: header mutations to
the headers, body mutations to the body. Plugin tests read the same for every plugin, and
protocol tests use the lower-level `messages` builders and `Step`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asm_proxy import codec
from asm_proxy.chain import Chain, Entry
from asm_proxy.config import ConfigError, MatchRule, Selector, ServerSettings
from asm_proxy.envoy_headers import decode_header_map, decode_value
from asm_proxy.exchange import Http
from asm_proxy.headers import Headers
from asm_proxy.loader import build_chain, load_text
from asm_proxy.matching import compile_match, compile_selector
from asm_proxy.metrics.serving import bind_chain
from asm_proxy.metrics.store import Registry
from asm_proxy.plugin import FailStrategy, Phase, Plugin, prepare
from asm_proxy.stream import Stream
from asm_proxy.wire import BodySendMode, ProcessingMode, core, ext_proc

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(headers: HeaderInput | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.lower(), v) for k, v in items]


class messages:
    """Builders for the ProcessingRequests Envoy sends."""

    @staticmethod
    def _with(
        msg: ext_proc.ProcessingRequest,
        attributes: Mapping[str, Any] | None,
        protocol: Mapping[str, Any] | None,
        observability: bool,
    ) -> ext_proc.ProcessingRequest:
        if attributes:
            msg.attributes["envoy.filters.http.ext_proc"].CopyFrom(codec.dict_to_struct(attributes))
        if protocol is not None:
            msg.protocol_config.SetInParent()
            for key, value in protocol.items():
                setattr(msg.protocol_config, key, value)
        msg.observability_mode = observability
        return msg

    @staticmethod
    def request_headers(
        headers: HeaderInput | None = None,
        end_of_stream: bool = False,
        *,
        attributes: Mapping[str, Any] | None = None,
        protocol: Mapping[str, Any] | None = None,
        observability: bool = False,
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            request_headers=ext_proc.HttpHeaders(
                headers=codec.header_map_of(_pairs(headers)), end_of_stream=end_of_stream
            )
        )
        return messages._with(msg, attributes, protocol, observability)

    @staticmethod
    def response_headers(
        headers: HeaderInput | None = None,
        end_of_stream: bool = False,
        *,
        attributes: Mapping[str, Any] | None = None,
        protocol: Mapping[str, Any] | None = None,
        observability: bool = False,
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            response_headers=ext_proc.HttpHeaders(
                headers=codec.header_map_of(_pairs(headers)), end_of_stream=end_of_stream
            )
        )
        return messages._with(msg, attributes, protocol, observability)

    @staticmethod
    def request_body(
        data: bytes,
        end_of_stream: bool = True,
        *,
        protocol: Mapping[str, Any] | None = None,
        observability: bool = False,
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=data, end_of_stream=end_of_stream)
        )
        return messages._with(msg, None, protocol, observability)

    @staticmethod
    def response_body(
        data: bytes,
        end_of_stream: bool = True,
        *,
        protocol: Mapping[str, Any] | None = None,
        observability: bool = False,
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=data, end_of_stream=end_of_stream)
        )
        return messages._with(msg, None, protocol, observability)

    @staticmethod
    def request_trailers(
        trailers: HeaderInput | None = None, *, observability: bool = False
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            request_trailers=ext_proc.HttpTrailers(trailers=codec.header_map_of(_pairs(trailers)))
        )
        return messages._with(msg, None, None, observability)

    @staticmethod
    def response_trailers(
        trailers: HeaderInput | None = None, *, observability: bool = False
    ) -> ext_proc.ProcessingRequest:
        msg = ext_proc.ProcessingRequest(
            response_trailers=ext_proc.HttpTrailers(trailers=codec.header_map_of(_pairs(trailers)))
        )
        return messages._with(msg, None, None, observability)


# --------------------------------------------------------------------------------------
# Envoy's side: applying replies


def apply_header_mutation(
    headers: list[tuple[str, str]], mutation: ext_proc.HeaderMutation
) -> list[tuple[str, str]]:
    """What Envoy does with a HeaderMutation: removals first, then each set in order."""
    removed = set(mutation.remove_headers)
    out = [(k, v) for k, v in headers if k not in removed]
    for option in mutation.set_headers:
        key = option.header.key
        value = (
            decode_value(option.header.raw_value)
            if option.header.raw_value
            else option.header.value
        )
        present = any(k == key for k, _ in out)
        if option.append_action == core.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD:
            # Envoy's ext_proc: an append_action of 0 means "look at the append flag".
            action = (
                core.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
                if option.HasField("append") and option.append.value
                else core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
            )
        else:
            action = option.append_action
        if action == core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD:
            out = [(k, v) for k, v in out if k != key] + [(key, value)]
        elif action == core.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD:
            out.append((key, value))
        elif action == core.HeaderValueOption.ADD_IF_ABSENT:
            if not present:
                out.append((key, value))
        elif action == core.HeaderValueOption.OVERWRITE_IF_EXISTS and present:
            out = [(k, v) for k, v in out if k != key] + [(key, value)]
    return out


def _header_list(header_map: core.HeaderMap) -> list[tuple[str, str]]:
    return [(k, v) for k, values in decode_header_map(header_map).items() for v in values]


@dataclass
class Immediate:
    status: int
    body: bytes
    headers: Headers
    details: str


@dataclass
class Step:
    """One reply, decoded; `headers`/`body` are what Envoy holds after applying it."""

    raw: Any
    kind: str
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    trailers: Headers | None = None
    immediate: Immediate | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    mode_override: Any | None = None
    clear_route_cache: bool = False
    body_mutated: bool = False
    status: int = 0  # CommonResponse status
    at: float = 0.0  # the event loop's time when the reply was ready

    @property
    def responded(self) -> bool:
        return self.immediate is not None


def decode_reply(raw: Any) -> tuple[str, Any]:
    kind = raw.WhichOneof("response")
    if kind is None:
        raise AssertionError(f"a ProcessingResponse with no response set: {raw}")
    return kind, getattr(raw, kind)


_LOOP: asyncio.AbstractEventLoop | None = None


def _host_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every PluginHost of the process (a loop per host would leak)."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    return _LOOP


class PluginHost:
    """Runs a chain the way the server does, one simulated Envoy exchange at a time.

    `PluginHost(PluginClass, config_dict, **entry)` for one plugin (entry: name, phase,
    priority, fail_strategy, timeout, match, selector), or `PluginHost.from_yaml(text)`
    for a whole config file. Call `new_exchange()` to start the next HTTP exchange.
    """

    def __init__(
        self,
        plugin: type[Plugin] | Plugin | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        name: str = "plugin-under-test",
        phase: Phase = Phase.UNSPECIFIED,
        priority: int = 0,
        fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE,
        timeout: float | None = None,
        match: Sequence[Mapping[str, Any]] = (),
        selector: Mapping[str, Any] | None = None,
        chain: Chain | None = None,
        settings: ServerSettings | None = None,
        protocol: Mapping[str, Any] | None = None,
    ) -> None:
        if chain is None:
            if plugin is None:
                raise TypeError("give a plugin class (or instance) or a chain")
            if isinstance(plugin, Plugin):
                instance = plugin
            else:
                instance = plugin(plugin.Config.model_validate(dict(config or {})))
            prepare(instance, name)
            entry = Entry(
                index=0,
                name=name,
                type_name=type(instance).__name__,
                plugin=instance,
                phase=phase,
                priority=priority,
                fail_strategy=fail_strategy,
                timeout=timeout,
                matches=compile_match([MatchRule.model_validate(m) for m in match]),
                selects=compile_selector(Selector.model_validate(selector) if selector else None),
            )
            chain = Chain([entry])
        self.chain = chain
        #: The chain's metrics (its plugins' own and their hooks'): read with `metric()`.
        self.metrics = Registry()
        bind_chain(chain, self.metrics)
        self.settings = settings or ServerSettings()
        self.protocol = dict(protocol) if protocol is not None else {}
        self._loop = _host_loop()
        self._started = False
        self.stream: Any = None
        self.new_exchange()

    @classmethod
    def from_yaml(cls, text: str, **kwargs: Any) -> PluginHost:
        from asm_proxy.config import parse_file

        parsed = parse_file("<test>", text)
        chain = build_chain(parsed)
        return cls(chain=chain, settings=parsed.settings, **kwargs)

    # -- lifecycle -------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def advance(self, seconds: float) -> None:
        """Let the event loop run for `seconds` (background tasks such as key refreshers
        only make progress while the loop runs)."""
        self.run(asyncio.sleep(seconds))

    def new_exchange(self) -> PluginHost:
        if not self._started:
            self.run(self.chain.start())
            self._started = True

        async def make() -> Stream:
            return Stream(self.chain, self.settings)

        self.stream = self.run(make())
        self._first = True
        self.request_headers_now: list[tuple[str, str]] = []
        self.response_headers_now: list[tuple[str, str]] = []
        return self

    def close(self) -> None:
        self.run(self.chain.close())

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metric(self, name: str, **labels: str) -> float:
        """A metric of the chain's plugins, summed over the series with these labels (a
        histogram's count): `host.metric("asm_proxy_plugin_x_total", outcome="ok")`."""
        return self.metrics.value(name, labels)

    @property
    def http(self) -> Http:
        """What plugins see of the current exchange."""
        http: Http | None = self.stream.http
        if http is None:
            raise RuntimeError("no message sent on this exchange yet")
        return http

    def state(self, name: str | None = None) -> Any:
        """A plugin's `http.state` on the current exchange (the only plugin's, or `name`'s)."""
        entries = self.chain.entries
        if name is None:
            if len(entries) != 1:
                raise TypeError("several plugins: give the name of the one whose state to read")
            entry = entries[0]
        else:
            entry = next(e for e in entries if e.name == name)
        exchange = self.stream.exchange
        if exchange is None:
            raise RuntimeError("no message sent on this exchange yet")
        return (exchange.slots or {}).get(id(entry.plugin))

    # -- sending ---------------------------------------------------------------------

    def send(self, msg: Any) -> list[Step]:
        """Send one ProcessingRequest; returns the decoded replies (usually one)."""
        return self.run(self._send(msg))  # type: ignore[no-any-return]

    async def _send(self, msg: Any) -> list[Step]:
        if self._first and not msg.HasField("protocol_config"):
            msg.protocol_config.SetInParent()
            for key, value in self.protocol.items():
                setattr(msg.protocol_config, key, value)
        self._first = False
        reply = await self.stream.handle(msg)
        at = asyncio.get_running_loop().time()
        if reply is None:
            return []
        replies = reply if isinstance(reply, list) else [reply]
        steps = [self._decode(r, msg) for r in replies]
        for step in steps:
            step.at = at
        return steps

    def now(self) -> float:
        """The event loop's time (what `Step.at` is measured in)."""
        return self._loop.time()

    def request_headers_at_once(self, requests: Sequence[HeaderInput]) -> list[Step]:
        """Several exchanges whose request headers arrive together, each on its own stream
        served concurrently on one loop, as a worker serves them: their steps in order,
        each with `at`, when its answer was ready. This host's own exchange is untouched."""

        async def all_of() -> list[Step]:
            siblings = [self._sibling() for _ in requests]
            for sibling in siblings:
                sibling.stream = Stream(self.chain, self.settings)
            steps = await asyncio.gather(
                *(
                    s._send(_request_headers_message(h, True))
                    for s, h in zip(siblings, requests, strict=True)
                )
            )
            return [one for (one,) in steps]

        return self.run(all_of())  # type: ignore[no-any-return]

    def _sibling(self) -> PluginHost:
        """A host on the same chain, loop and settings, for another exchange."""
        sibling = PluginHost.__new__(PluginHost)
        sibling.__dict__.update(self.__dict__)
        sibling._first = True
        sibling.request_headers_now = []
        sibling.response_headers_now = []
        return sibling

    def _decode(self, raw: Any, msg: Any) -> Step:
        kind, body = decode_reply(raw)
        step = Step(raw=raw, kind=kind)
        if raw.HasField("dynamic_metadata"):
            step.metadata = codec.struct_to_dict(raw.dynamic_metadata)
        if raw.HasField("mode_override"):
            step.mode_override = raw.mode_override
        if kind == "immediate_response":
            ir = raw.immediate_response
            headers = Headers(apply_header_mutation([], ir.headers))
            step.immediate = Immediate(ir.status.code, ir.body, headers, ir.details)
            return step
        sent = msg.WhichOneof("request")
        if kind in ("request_headers", "response_headers", "request_body", "response_body"):
            common = body.response
            step.status = common.status
            step.clear_route_cache = common.clear_route_cache
            current = (
                self.request_headers_now
                if kind.startswith("request")
                else self.response_headers_now
            )
            if sent.endswith("headers"):
                current = _header_list(getattr(msg, sent).headers)
            if common.HasField("header_mutation"):
                current = apply_header_mutation(current, common.header_mutation)
            if kind.startswith("request"):
                self.request_headers_now = current
            else:
                self.response_headers_now = current
            step.headers = Headers(current)
            if common.HasField("body_mutation"):
                step.body_mutated = True
                mutation = common.body_mutation
                which = mutation.WhichOneof("mutation")
                if which == "body":
                    step.body = mutation.body
                elif which == "clear_body":
                    step.body = b""
                elif which == "streamed_response":
                    step.body = mutation.streamed_response.body
            elif sent.endswith("body"):
                step.body = getattr(msg, sent).body
        elif kind in ("request_trailers", "response_trailers"):
            trailers = _header_list(getattr(msg, sent).trailers)
            if body.HasField("header_mutation"):
                trailers = apply_header_mutation(trailers, body.header_mutation)
            step.trailers = Headers(trailers)
        return step

    def _one(self, msg: Any) -> Step:
        steps = self.send(msg)
        if len(steps) != 1:
            raise AssertionError(f"expected one reply, got {len(steps)}: {steps}")
        return steps[0]

    def request_headers(
        self,
        headers: HeaderInput | None = None,
        end_of_stream: bool = True,
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> Step:
        """Send request headers. Pseudo-headers default to GET / on example.com."""
        return self._one(_request_headers_message(headers, end_of_stream, attributes))

    def request_body(self, data: bytes, end_of_stream: bool = True) -> list[Step]:
        return self.send(messages.request_body(data, end_of_stream))

    def request_trailers(self, trailers: HeaderInput) -> list[Step]:
        return self.send(messages.request_trailers(trailers))

    def response_headers(
        self, headers: HeaderInput | None = None, end_of_stream: bool = False
    ) -> Step:
        pairs = _pairs(headers)
        if not any(k == ":status" for k, _ in pairs):
            pairs = [(":status", "200"), *pairs]
        return self._one(messages.response_headers(pairs, end_of_stream))

    def response_body(self, data: bytes, end_of_stream: bool = True) -> list[Step]:
        return self.send(messages.response_body(data, end_of_stream))

    def response_trailers(self, trailers: HeaderInput) -> list[Step]:
        return self.send(messages.response_trailers(trailers))


def _request_headers_message(
    headers: HeaderInput | None,
    end_of_stream: bool,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """request_headers as Envoy sends them; pseudo-headers default to GET / on example.com."""
    pairs = _pairs(headers)
    names = {k for k, _ in pairs}
    defaults = [
        (":method", "GET"),
        (":path", "/"),
        (":authority", "example.com"),
        (":scheme", "http"),
    ]
    pairs = [d for d in defaults if d[0] not in names] + pairs
    return messages.request_headers(pairs, end_of_stream, attributes=attributes)


@dataclass(frozen=True)
class ConfigCheck:
    """What `asm-proxy validate` would say of a config: problems (it is refused) and
    warnings (it loads), each as the line validate prints."""

    problems: list[str]
    warnings: list[str]


def check_config(text: str, name: str = "asm-proxy.yaml") -> ConfigCheck:
    """Check a config file's text as `validate`, start and reload do (plugins included)."""
    try:
        loaded = load_text(name, text)
    except ConfigError as exc:
        return ConfigCheck([str(p) for p in exc.problems], [])
    return ConfigCheck([], [str(w) for w in loaded.warnings])


def mode_of(step: Step) -> dict[str, str]:
    """A Step's mode_override as {field: enum name}, for readable assertions."""
    if step.mode_override is None:
        return {}
    pm = step.mode_override
    body = ProcessingMode.BodySendMode.Name
    header = ProcessingMode.HeaderSendMode.Name
    return {
        "request_body_mode": body(pm.request_body_mode),
        "request_trailer_mode": header(pm.request_trailer_mode),
        "response_header_mode": header(pm.response_header_mode),
        "response_body_mode": body(pm.response_body_mode),
        "response_trailer_mode": header(pm.response_trailer_mode),
    }


__all__ = [
    "BodySendMode",
    "ConfigCheck",
    "Immediate",
    "PluginHost",
    "Step",
    "apply_header_mutation",
    "check_config",
    "messages",
    "mode_of",
]
