"""Plugins that exist only for the tests: they fail, hang, rewrite bodies, reroute, record.

Configs refer to them by import path, e.g. `type: tests.support.plugins:Raiser`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from pydantic import Field

from asm_proxy.api import Chunk, Event, Http, Plugin, PluginConfig, Respond


class RaiserConfig(PluginConfig):
    mark: str = "x-raiser"


class Raiser(Plugin):
    """Sets a header, then raises: the header must not survive (its changes are undone)."""

    Config = RaiserConfig

    def on_request_headers(self, http: Http) -> None:
        http.request.headers.set(self.config.mark, "half-done")
        http.set_metadata("raiser", "half-done")
        raise RuntimeError("this plugin always fails")


class HangerConfig(PluginConfig):
    blocking_ms: int = 0  # >0: block the loop this long instead of awaiting forever


class Hanger(Plugin):
    """An async hook that never finishes (or a sync one that blocks for blocking_ms)."""

    Config = HangerConfig

    def __init__(self, config: HangerConfig) -> None:
        super().__init__(config)
        if config.blocking_ms:
            self.on_request_headers = self._block  # type: ignore[method-assign]

    async def on_request_headers(self, http: Http) -> None:
        http.request.headers.set("x-hanger", "reached")
        await asyncio.Event().wait()

    def _block(self, http: Http) -> None:
        http.request.headers.set("x-hanger", "reached")
        time.sleep(self.config.blocking_ms / 1000)


class SetHeaderConfig(PluginConfig):
    name: str = "x-set"
    value: str = "1"


class SetHeader(Plugin):
    Config = SetHeaderConfig

    def on_request_headers(self, http: Http) -> None:
        http.request.headers.append(self.config.name, self.config.value)


class BodyConfig(PluginConfig):
    request: bool = True
    response: bool = True
    suffix: str = ""


class UpperBody(Plugin):
    """Needs whole bodies: upper-cases them (and appends `suffix`), records what it saw."""

    Config = BodyConfig

    def __init__(self, config: BodyConfig) -> None:
        super().__init__(config)
        wanted: set[Event] = set()
        if config.request:
            wanted.add(Event.REQUEST_BODY)
        if config.response:
            wanted.add(Event.RESPONSE_BODY)
        self.hooks = frozenset(wanted)
        self.seen: list[tuple[str, int, int, bool]] = []

    def _rewrite(self, http: Http, direction: str) -> None:
        message = http.request if direction == "request" else http.response
        body = message.body
        self.seen.append((direction, body.received_size, len(body.chunks), body.complete))
        http.set_metadata(f"{direction}_body_seen", body.received_size)
        if body.complete:  # a prefix (BUFFERED_PARTIAL past the limit) is left alone
            body.replace(body.data.upper() + self.config.suffix.encode())

    def on_request_body(self, http: Http) -> None:
        self._rewrite(http, "request")

    def on_response_body(self, http: Http) -> None:
        self._rewrite(http, "response")


class ChunkConfig(PluginConfig):
    request: bool = True
    response: bool = True
    upper: bool = True


class ChunkUpper(Plugin):
    """Works chunk by chunk (STREAMED is enough): upper-cases each chunk, counts them."""

    Config = ChunkConfig

    def __init__(self, config: ChunkConfig) -> None:
        super().__init__(config)
        wanted: set[Event] = set()
        if config.request:
            wanted.add(Event.REQUEST_BODY_CHUNK)
        if config.response:
            wanted.add(Event.RESPONSE_BODY_CHUNK)
        self.hooks = frozenset(wanted)
        self.chunks: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def _chunk(self, direction: str, chunk: Chunk) -> None:
        self.chunks[direction] += 1
        self.bytes[direction] += len(chunk.data)
        if self.config.upper:
            chunk.replace(chunk.data.upper())

    def on_request_body_chunk(self, http: Http, chunk: Chunk) -> None:
        self._chunk("request", chunk)

    def on_response_body_chunk(self, http: Http, chunk: Chunk) -> None:
        self._chunk("response", chunk)


class RerouteConfig(PluginConfig):
    authority: str
    when_header: str = "x-reroute"


class Reroute(Plugin):
    """Rewrites :authority when the request carries `when_header`."""

    Config = RerouteConfig

    def on_request_headers(self, http: Http) -> None:
        if self.config.when_header in http.request.headers:
            http.request.authority = self.config.authority


class MetadataConfig(PluginConfig):
    values: dict[str, str] = Field(default_factory=dict)
    from_header: str = ""


class SetMetadata(Plugin):
    """Emits dynamic metadata: fixed values, plus the value of `from_header` if given."""

    Config = MetadataConfig

    def on_request_headers(self, http: Http) -> None:
        for key, value in self.config.values.items():
            http.set_metadata(key, value)
        if self.config.from_header:
            http.set_metadata("from_header", http.request.headers.get(self.config.from_header))


class TrailerConfig(PluginConfig):
    name: str = "x-trailer-seen"


class TrailerTouch(Plugin):
    """Reads and changes trailers in both directions."""

    Config = TrailerConfig

    def on_request_trailers(self, http: Http) -> None:
        http.request.trailers.set(self.config.name, str(len(http.request.trailers)))

    def on_response_trailers(self, http: Http) -> None:
        http.response.trailers.set(self.config.name, str(len(http.response.trailers)))


class GateConfig(PluginConfig):
    header: str = "x-allow"
    user_header: str = "x-user"


class Gate(Plugin):
    """An auth-like plugin: 401 without `header`, 403 unless it says yes, else tags the user."""

    Config = GateConfig

    def on_request_headers(self, http: Http) -> Respond | None:
        value = http.request.headers.get(self.config.header)
        if value is None:
            return Respond(
                401,
                body="who are you?\n",
                headers={"www-authenticate": 'Bearer realm="test"'},
                details="gate_missing_credentials",
            )
        if value != "yes":
            return Respond(403, body="not you\n", details="gate_denied")
        http.request.headers.set(self.config.user_header, "alice")
        http.request.headers.remove(self.config.header)
        http.set_metadata("user", "alice")
        return None


class Recorder(Plugin):
    """Counts every hook it gets; needs everything (so Envoy sends every phase)."""

    def __init__(self, config: PluginConfig) -> None:
        super().__init__(config)
        self.calls: Counter[str] = Counter()

    def on_request_headers(self, http: Http) -> None:
        self.calls["request_headers"] += 1

    def on_request_body(self, http: Http) -> None:
        self.calls["request_body"] += 1

    def on_request_trailers(self, http: Http) -> None:
        self.calls["request_trailers"] += 1

    def on_response_headers(self, http: Http) -> None:
        self.calls["response_headers"] += 1

    def on_response_body(self, http: Http) -> None:
        self.calls["response_body"] += 1

    def on_response_trailers(self, http: Http) -> None:
        self.calls["response_trailers"] += 1


class WorkloadTag(Plugin):
    """Copies the calling workload's identity into request headers."""

    def on_request_headers(self, http: Http) -> None:
        workload = http.workload
        http.request.headers.set("x-workload-namespace", workload.namespace or "unknown")
        http.request.headers.set("x-workload-app", workload.labels.get("app", "unknown"))


class SlowTagConfig(PluginConfig):
    header: str = "x-version"
    value: str = "v1"
    delay_ms: int = 0


class SlowTag(Plugin):
    """Waits `delay_ms` (asynchronously), then sets `header: value`; records close()."""

    Config = SlowTagConfig
    closed: list[str] = []

    async def on_request_headers(self, http: Http) -> None:
        if self.config.delay_ms:
            await asyncio.sleep(self.config.delay_ms / 1000)
        http.request.headers.set(self.config.header, self.config.value)

    async def close(self) -> None:
        SlowTag.closed.append(self.config.value)


class BadMetadata(Plugin):
    """Sets metadata Envoy's Struct cannot hold: the failure is asm-proxy's, after the hook
    (its own fault, reported as such), not the plugin's."""

    def on_request_headers(self, http: Http) -> None:
        http.set_metadata("bad", object())


class BadDenialConfig(PluginConfig):
    value: str = "\ud800"


class BadDenial(Plugin):
    """Denies with a header value asm-proxy cannot send: by default a lone surrogate,
    which neither UTF-8 nor surrogateescape holds (the failure is asm-proxy's, building the
    answer)."""

    Config = BadDenialConfig

    def on_request_headers(self, http: Http) -> Respond:
        return Respond(403, body="denied\n", headers={"x-unsendable": self.config.value})


class HoardConfig(PluginConfig):
    kib_per_request: int = 256


class Hoard(Plugin):
    """Keeps `kib_per_request` KiB for ever at each request: a worker whose memory only
    grows (what maxWorkerRss is for)."""

    Config = HoardConfig
    kept: list[bytes] = []

    def on_request_headers(self, http: Http) -> None:
        Hoard.kept.append(b"x" * (self.config.kib_per_request * 1024))


class BallastConfig(PluginConfig):
    mib: int = 150


class Ballast(Plugin):
    """Holds `mib` MiB from the moment it is made: a worker heavy before it serves."""

    Config = BallastConfig

    def __init__(self, config: BallastConfig) -> None:
        super().__init__(config)
        self.ballast = b"\x01" * (config.mib * 2**20)

    def on_request_headers(self, http: Http) -> None:
        return None


class CopyHeaderConfig(PluginConfig):
    source: str = "x-in"
    target: str = "x-out"
    text: str = "née ✓"  # a non-ASCII value of the plugin's own
    deny_header: str = "x-deny"


class CopyHeader(Plugin):
    """Shows how a header value reads and how it goes back out: `target` gets `source`'s
    value, `target-repr` its `ascii()` (what the plugin saw, code point by code point),
    `target-text` the plugin's own `text`; with `deny_header` present, the same headers go
    into a 403 instead."""

    Config = CopyHeaderConfig

    def on_request_headers(self, http: Http) -> Respond | None:
        value = http.request.headers.get(self.config.source)
        if value is None:
            return None
        target = self.config.target
        out = {target: value, target + "-repr": ascii(value), target + "-text": self.config.text}
        if self.config.deny_header in http.request.headers:
            return Respond(403, body="copied\n", headers=out)
        for name, text in out.items():
            http.request.headers.set(name, text)
        return None


class HeaderOpsConfig(PluginConfig):
    #: [action, name, value]: action is set, append, add_if_absent or remove.
    ops: list[tuple[str, str, str]] = Field(default_factory=list)


class HeaderOps(Plugin):
    """Applies `ops` to the request headers in order: each header action a plugin has."""

    Config = HeaderOpsConfig

    def on_request_headers(self, http: Http) -> None:
        headers = http.request.headers
        for action, name, value in self.config.ops:
            if action == "remove":
                headers.remove(name)
            else:
                getattr(headers, action)(name, value)
