"""body_log: HTTP bodies of selected traffic, redacted and capped, for Envoy's access log.

    - name: body-log
      type: body_log
      failStrategy: FAIL_OPEN
      match: [{paths: [{prefix: /api/}]}]
      config:
        maxBytes: 2048
        contentTypes: [application/json, text/*]
        redactKeys: [password, token, secret]
        sampleRate: 0.1

Bodies are watched chunk by chunk as they pass (Envoy's STREAMED mode is enough, and they
reach the upstream and the client byte for byte unchanged). For each direction the plugin
keeps the first `maxBytes` (or, for a body it must redact, up to `redactLimit`), and at the
body's end publishes, under the server's metadata namespace (`asm-proxy` by default):

    <dir>_body            the body text (UTF-8, or base64 for binary with binary: base64)
    <dir>_body_bytes      the size of the whole body in bytes
    <dir>_body_truncated  true if more than maxBytes were there (only the first are logged)
    <dir>_body_encoding   utf-8 or base64
    <dir>_body_omitted    why there is no <dir>_body: binary, too_large_to_redact,
                          invalid_json, invalid_form, incomplete, content_encoding

where <dir> is `request` or `response`: `%DYNAMIC_METADATA(asm-proxy:request_body)%` in
Envoy's access log format prints it. Once the exchange is over it also logs one JSON line
(logger `asm_proxy.plugin.<name>`, level INFO) with method, path, status, headers (those in
`redactHeaders` redacted) and both bodies.

Redaction: JSON bodies (`*/json`, `*/*+json`) and form bodies
(`application/x-www-form-urlencoded`) have the value of every key that contains one of
`redactKeys` (case, `-` and `_` ignored; nested objects and arrays too, and JSON held in
a string value) replaced with "[REDACTED]". That needs the whole document: a JSON or form
body larger than `redactLimit`, or one that did not arrive whole, is not logged at all
(`<dir>_body_omitted`), never a prefix that might hold a secret. The redacted text is
then capped at maxBytes. Query parameters in the logged path are redacted the same way.
Other text bodies are logged as they are: list only the content types whose bodies may be
logged in clear.
"""

from __future__ import annotations

import base64
import random
import re
from typing import Any, Literal
from urllib.parse import unquote_plus

import orjson
from pydantic import Field, field_validator, model_validator

from asm_proxy.api import Chunk, Event, Headers, Http, Plugin, PluginConfig, media_type

REDACTED = "[REDACTED]"

DEFAULT_CONTENT_TYPES = (
    "application/json",
    "application/*+json",
    "application/x-www-form-urlencoded",
    "text/*",
)
DEFAULT_REDACT_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "cookie",
    "session",
)
DEFAULT_REDACT_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
)

_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+*-]+$|^\*/\*$")
_NOT_KEY_CHARS = str.maketrans("", "", "-_. ")


def normalize_key(key: str) -> str:
    return key.lower().translate(_NOT_KEY_CHARS)


class BodyLogConfig(PluginConfig):
    #: Log request bodies / response bodies.
    request: bool = True
    response: bool = True
    #: The most bytes of a body logged (the rest is counted and noted as truncated).
    max_bytes: int = 4096
    #: A JSON or form body up to this size is held whole to be redacted; larger ones are
    #: not logged. Must be at least maxBytes.
    redact_limit: int = 65536
    #: Media types whose bodies are logged: exact, `type/*`, `type/*+suffix`,
    #: `*/*+suffix`, or `*/*` (any, and bodies without a content-type).
    content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    #: JSON and form keys whose values are redacted (a key matches if it contains one).
    redact_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_KEYS))
    #: Headers whose values are redacted in the log line.
    redact_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_HEADERS))
    #: Bodies that are not text (by content type, or not valid UTF-8): skip or log base64.
    binary: Literal["skip", "base64"] = "skip"
    #: The share of exchanges logged, 0.0-1.0 (decided once per exchange).
    sample_rate: float = 1.0
    #: Publish dynamic metadata for Envoy's access log.
    metadata: bool = True
    #: Log one JSON line per exchange; with or without the (redacted) headers.
    log_line: bool = True
    log_headers: bool = True

    @field_validator("content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            media = item.strip().lower()
            if not _MEDIA_TYPE.match(media):
                raise ValueError(f"{item!r} is not a media type (like application/json or text/*)")
            out.append(media)
        return out

    @field_validator("redact_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        keys = [normalize_key(k) for k in value]
        if any(not k for k in keys):
            raise ValueError("redactKeys must not contain empty keys")
        return keys

    @field_validator("redact_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return [h.strip().lower() for h in value]

    @model_validator(mode="after")
    def _limits(self) -> BodyLogConfig:
        if self.max_bytes < 0:
            raise ValueError("maxBytes must not be negative")
        if self.redact_limit < self.max_bytes:
            raise ValueError("redactLimit must be at least maxBytes")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sampleRate must be between 0.0 and 1.0")
        if not (self.request or self.response):
            raise ValueError("request and response are both false: nothing to log")
        if not (self.metadata or self.log_line):
            raise ValueError("metadata and logLine are both false: nowhere to log to")
        return self


# --------------------------------------------------------------------------------------
# Redaction (pure functions)


class Redactor:
    """Replaces the values of sensitive keys; a key is sensitive if it contains a word."""

    __slots__ = ("_known", "words")

    def __init__(self, words: list[str]) -> None:
        self.words = tuple(words)
        self._known: dict[str, bool] = {}

    def sensitive(self, key: str) -> bool:
        known = self._known.get(key)
        if known is None:
            norm = normalize_key(key)
            known = any(word in norm for word in self.words)
            if len(self._known) < 4096:
                self._known[key] = known
        return known

    def json(self, value: Any) -> Any:
        """A copy of a parsed JSON document with sensitive keys' values redacted, also in
        JSON carried inside a string (an API that echoes or wraps a request as text)."""
        if isinstance(value, dict):
            return {k: REDACTED if self.sensitive(k) else self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
            return self._embedded(value)
        return value

    def _embedded(self, text: str) -> str:
        try:
            inner = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if not isinstance(inner, dict | list):
            return text
        redacted = self.json(inner)
        return text if redacted == inner else orjson.dumps(redacted).decode("utf-8")

    def form(self, text: str) -> str:
        """`a=1&password=x` -> `a=1&password=[REDACTED]`; the rest stays as written."""
        parts = text.split("&")
        for i, part in enumerate(parts):
            raw_key, sep, _ = part.partition("=")
            if sep and self.sensitive(unquote_plus(raw_key)):
                parts[i] = raw_key + "=" + REDACTED
        return "&".join(parts)

    def path(self, path: str) -> str:
        cut = path.find("?")
        if cut < 0 or not self.words:
            return path
        return path[: cut + 1] + self.form(path[cut + 1 :])


def cut_utf8(data: bytes, limit: int, *, prefix: bool = False) -> tuple[str | None, bool]:
    """The first `limit` bytes of UTF-8 `data` as text (a character split by the cut is
    dropped), and whether anything was cut; None if it is not UTF-8. `prefix`: `data` is
    itself only the start of the body (so it may end inside a character)."""
    cut = len(data) > limit
    head = data[:limit] if cut else data
    try:
        return head.decode("utf-8"), cut
    except UnicodeDecodeError as exc:
        # Only a character split at the very end of a cut prefix is forgivable.
        if (
            (cut or prefix)
            and exc.start >= len(head) - 3
            and exc.reason == "unexpected end of data"
        ):
            try:
                return head[: exc.start].decode("utf-8"), cut
            except UnicodeDecodeError:
                return None, cut
        return None, cut


# --------------------------------------------------------------------------------------
# Per exchange


TEXT, JSON, FORM, BINARY = "text", "json", "form", "binary"


class Side:
    """One direction's body as the plugin keeps it."""

    __slots__ = ("chunks", "content_type", "encoding", "finished", "held", "kind", "limit", "total")

    def __init__(self, kind: str, limit: int, content_type: str, encoding: str) -> None:
        self.kind = kind
        self.limit = limit
        self.content_type = content_type
        self.encoding = encoding  # content-encoding, "" for none
        self.chunks: list[bytes] = []
        self.held = 0
        self.total = 0
        self.finished = False

    def add(self, data: bytes) -> None:
        n = len(data)
        self.total += n
        room = self.limit - self.held
        if room > 0 and n:
            piece = data if n <= room else data[:room]
            self.chunks.append(piece)
            self.held += len(piece)


class Exchange:
    __slots__ = ("logged", "request", "request_headers", "response", "response_headers", "result")

    def __init__(self) -> None:
        self.request: Side | None = None
        self.response: Side | None = None
        self.request_headers: dict[str, Any] | None = None
        self.response_headers: dict[str, Any] | None = None
        self.result: dict[str, dict[str, Any]] = {}
        self.logged = False


_NO_BODY_STATUS = frozenset({204, 304})


class BodyLogPlugin(Plugin):
    """Request and response bodies into dynamic metadata and one JSON log line."""

    Config = BodyLogConfig

    def __init__(self, config: BodyLogConfig) -> None:
        super().__init__(config)
        self.max_bytes = config.max_bytes
        self.redactor = Redactor(config.redact_keys)
        self.redact_headers = frozenset(config.redact_headers)
        exact: set[str] = set()
        patterns: list[tuple[str, str]] = []  # (prefix, suffix) of a media type
        self.any_type = False
        for media in config.content_types:
            if media == "*/*":
                self.any_type = True
            elif "*" in media:  # type/*, type/*+suffix, */*+suffix
                kind, _, sub = media.partition("/")
                prefix = "" if kind == "*" else kind + "/"
                patterns.append((prefix, sub.lstrip("*")))
            else:
                exact.add(media)
        self.exact_types = frozenset(exact)
        self.type_patterns = tuple(patterns)
        self._kinds: dict[str, str | None] = {}
        self.random = random.Random()
        self.sample_rate = config.sample_rate
        hooks = {Event.REQUEST_HEADERS, Event.RESPONSE_HEADERS}
        if config.request:
            hooks |= {Event.REQUEST_BODY_CHUNK, Event.REQUEST_TRAILERS}
        if config.response:
            hooks |= {Event.RESPONSE_BODY_CHUNK, Event.RESPONSE_TRAILERS}
        self.hooks = frozenset(hooks)
        self.bodies = self.counter(
            "body_log_bodies_total",
            "Bodies seen, by direction and what was logged: logged (whole), truncated (the "
            "first maxBytes), or why it was omitted (binary, too_large_to_redact, ...)",
            labels=["direction", "result"],
        )

    # -- what to keep --------------------------------------------------------------------

    def kind_of(self, media: str) -> str | None:
        """How a body of this media type is logged (json, form, text, binary), or None for
        a type that is not logged."""
        cached = self._kinds.get(media, "")
        if cached != "":
            return cached
        kind: str | None = None
        if (
            self.any_type
            or media in self.exact_types
            or any(
                media.startswith(prefix) and media.endswith(suffix) and "/" in media
                for prefix, suffix in self.type_patterns
            )
        ):
            kind = _classify(media)
        if len(self._kinds) < 1024:
            self._kinds[media] = kind
        return kind

    def side(self, headers: Headers) -> Side | None:
        media = media_type(headers.get("content-type"))
        kind = self.kind_of(media)
        if kind is None:
            return None
        encoding = (headers.get("content-encoding") or "").strip().lower()
        if encoding == "identity":
            encoding = ""
        if encoding:
            kind = BINARY
        redacts = kind in (JSON, FORM) and bool(self.redactor.words)
        limit = self.config.redact_limit if redacts else self.max_bytes
        return Side(kind, limit, media, encoding)

    def headers_for_log(self, headers: Headers) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in headers.items():
            if name.startswith(":"):
                continue
            if name in self.redact_headers:
                value = REDACTED
            old = out.get(name)
            if old is None:
                out[name] = value
            elif isinstance(old, list):
                old.append(value)
            else:
                out[name] = [old, value]
        return out

    # -- hooks -----------------------------------------------------------------------------

    def on_request_headers(self, http: Http) -> None:
        rate = self.sample_rate
        if rate < 1.0 and (rate <= 0.0 or self.random.random() >= rate):
            http.done()
            return
        exchange = Exchange()
        if self.config.request:
            exchange.request = self.side(http.request.headers)
        if exchange.request is None:
            if not self.config.response:
                http.done()
                return
            http.done("request")  # Envoy need not stream this request body to us
        if self.config.log_line and self.config.log_headers:
            exchange.request_headers = self.headers_for_log(http.request.headers)
        http.state = exchange

    def on_request_body_chunk(self, http: Http, chunk: Chunk) -> None:
        exchange: Exchange | None = http.state
        side = exchange.request if exchange is not None else None
        if side is None or side.finished:
            return
        side.add(chunk.data)
        if chunk.end_of_stream:
            self.finish(http, "request", side, complete=True)

    def on_request_trailers(self, http: Http) -> None:
        exchange: Exchange | None = http.state
        side = exchange.request if exchange is not None else None
        if side is not None and not side.finished:
            self.finish(http, "request", side, complete=True)

    def on_response_headers(self, http: Http) -> None:
        exchange: Exchange | None = http.state
        if exchange is None:  # the exchange began without request headers
            http.done()
            return
        side = exchange.request
        if side is not None and not side.finished:
            # Without end_of_stream the request body ended early (or Envoy sent only a
            # prefix of it): complete only if there was none.
            self.finish(http, "request", side, complete=side.total == 0)
        if self.config.log_line and self.config.log_headers:
            exchange.response_headers = self.headers_for_log(http.response.headers)
        response = self.side(http.response.headers) if self.config.response else None
        exchange.response = response
        if response is not None and self._no_body(http):
            self.finish(http, "response", response, complete=True)
        if response is None or response.finished:
            self.emit(http, exchange)
            http.done()

    def on_response_body_chunk(self, http: Http, chunk: Chunk) -> None:
        exchange: Exchange | None = http.state
        side = exchange.response if exchange is not None else None
        if exchange is None or side is None or side.finished:
            return
        side.add(chunk.data)
        if chunk.end_of_stream:
            self.finish(http, "response", side, complete=True)
            self.emit(http, exchange)

    def on_response_trailers(self, http: Http) -> None:
        exchange: Exchange | None = http.state
        side = exchange.response if exchange is not None else None
        if exchange is not None and side is not None and not side.finished:
            self.finish(http, "response", side, complete=True)
            self.emit(http, exchange)

    @staticmethod
    def _no_body(http: Http) -> bool:
        status = http.response.status
        return (
            http.request.method == "HEAD"
            or status in _NO_BODY_STATUS
            or 100 <= status < 200
            or http.response.headers.get("content-length") == "0"
        )

    # -- results -----------------------------------------------------------------------------

    def render(self, side: Side, complete: bool) -> dict[str, Any]:
        """What is logged of one body: {body, bytes, truncated, encoding} or {bytes, omitted}."""
        data = side.chunks[0] if len(side.chunks) == 1 else b"".join(side.chunks)
        side.chunks = []
        result: dict[str, Any] = {"bytes": side.total}
        kind = side.kind
        if side.encoding:
            result["content_encoding"] = side.encoding
        if side.total == 0 and complete:
            result.update(body="", truncated=False, encoding="utf-8")
            return result
        if kind in (JSON, FORM) and self.redactor.words:
            if side.total > side.limit:
                result["omitted"] = "too_large_to_redact"
                return result
            if not complete:
                result["omitted"] = "incomplete"
                return result
            redacted = self._redacted(kind, data)
            if redacted is None:
                result["omitted"] = "invalid_json" if kind == JSON else "invalid_form"
                return result
            logged, cut = cut_utf8(redacted, self.max_bytes)
            assert logged is not None
            result.update(body=logged, truncated=cut, encoding="utf-8")
            return result
        truncated = side.total > len(data) or not complete
        if kind != BINARY:
            text, cut = cut_utf8(data, self.max_bytes, prefix=truncated)
            if text is not None:
                result.update(body=text, truncated=truncated or cut, encoding="utf-8")
                return result
        if self.config.binary == "base64":
            head = data[: self.max_bytes]
            result.update(
                body=base64.b64encode(head).decode("ascii"),
                truncated=truncated or len(data) > len(head),
                encoding="base64",
            )
        else:
            result["omitted"] = "content_encoding" if side.encoding else "binary"
        return result

    def _redacted(self, kind: str, data: bytes) -> bytes | None:
        """The redacted body as UTF-8 bytes (cut to maxBytes by the caller), or None."""
        if kind == JSON:
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
            try:
                return orjson.dumps(self.redactor.json(doc))
            except (orjson.JSONEncodeError, RecursionError):
                return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.redactor.form(text).encode("utf-8")

    def finish(self, http: Http, direction: str, side: Side, *, complete: bool) -> None:
        side.finished = True
        result = self.render(side, complete)
        exchange: Exchange = http.state
        exchange.result[direction] = result
        outcome = result.get("omitted") or ("truncated" if result["truncated"] else "logged")
        self.bodies.labels(direction, outcome).inc()
        if not self.config.metadata:
            return
        prefix = direction + "_body"
        http.set_metadata(prefix + "_bytes", result["bytes"])
        if "body" in result:
            http.set_metadata(prefix, result["body"])
            http.set_metadata(prefix + "_truncated", result["truncated"])
            http.set_metadata(prefix + "_encoding", result["encoding"])
        else:
            http.set_metadata(prefix + "_omitted", result["omitted"])

    def emit(self, http: Http, exchange: Exchange) -> None:
        """The exchange's one JSON log line (if there is a body to tell about)."""
        if exchange.logged or not self.config.log_line or not exchange.result:
            return
        exchange.logged = True
        request = http.request
        line: dict[str, Any] = {
            "plugin": self.name,
            "request_id": request.headers.get("x-request-id"),
            "method": request.method,
            "authority": request.authority,
            "path": self.redactor.path(request.path),
            "status": http.response.status,
        }
        for direction, side, headers in (
            ("request", exchange.request, exchange.request_headers),
            ("response", exchange.response, exchange.response_headers),
        ):
            entry: dict[str, Any] = {}
            if headers is not None:
                entry["headers"] = headers
            if side is not None:
                entry["content_type"] = side.content_type
            entry.update(exchange.result.get(direction, {}))
            line[direction] = entry
        self.log.info(orjson.dumps(line).decode("utf-8"))


def _classify(media: str) -> str:
    """json, form, text or binary, from a media type."""
    if media.endswith(("/json", "+json")):
        return JSON
    if media == "application/x-www-form-urlencoded":
        return FORM
    if media.startswith("text/") or media.endswith(("/xml", "+xml")) or media in _TEXT_TYPES:
        return TEXT
    return BINARY


_TEXT_TYPES = frozenset(
    {
        "application/javascript",
        "application/ecmascript",
        "application/yaml",
        "application/x-yaml",
        "application/graphql",
    }
)
