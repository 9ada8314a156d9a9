"""Where a credential is carried: a header (optionally after a scheme prefix), a cookie or a
query parameter; finding it in a request and taking it out before the upstream sees it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus

from pydantic import field_validator, model_validator

from asm_proxy.api import Headers, Http, PluginConfig


class Source(PluginConfig):
    """Exactly one of `header` (with an optional `prefix` such as "Bearer "), `cookie`, `query`."""

    header: str | None = None
    prefix: str = ""
    cookie: str | None = None
    query: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None:
            Headers().set(value, "")  # raises ValueError naming a bad header name
            value = value.lower()
        return value

    @model_validator(mode="after")
    def _one(self) -> Source:
        given = [k for k in ("header", "cookie", "query") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of header, cookie, query")
        if self.prefix and not self.header:
            raise ValueError("prefix applies only to a header source")
        return self

    def describe(self) -> str:
        if self.header:
            return f"header {self.header}" + (f" ({self.prefix.strip()})" if self.prefix else "")
        if self.cookie:
            return f"cookie {self.cookie}"
        return f"query parameter {self.query}"


class Ambiguous(Exception):
    """The same source carries more than one credential."""


@dataclass(frozen=True, slots=True)
class Found:
    value: str
    source: Source

    def remove(self, http: Http) -> None:
        """Take the credential out of the request (only this one; other values stay)."""
        src = self.source
        headers = http.request.headers
        if src.header:
            if not src.prefix:
                headers.remove(src.header)
                return
            keep = [v for v in headers.get_all(src.header) if _after_prefix(v, src.prefix) is None]
            if keep:
                headers.set_all(src.header, keep)
            else:
                headers.remove(src.header)
        elif src.cookie:
            assert src.cookie is not None
            kept: list[str] = []
            for value in headers.get_all("cookie"):
                kept += [p for p in _cookie_pairs(value) if _cookie_name(p) != src.cookie]
            if kept:
                headers.set("cookie", "; ".join(kept))
            else:
                headers.remove("cookie")
        else:
            path = http.request.path
            base, _, query = path.partition("?")
            parts = [p for p in query.split("&") if p and _query_name(p) != src.query]
            http.request.path = base + ("?" + "&".join(parts) if parts else "")


def _after_prefix(value: str, prefix: str) -> str | None:
    # Authentication schemes are case-insensitive (RFC 9110 section 11.1).
    if len(value) < len(prefix) or value[: len(prefix)].lower() != prefix.lower():
        return None
    return value[len(prefix) :].strip()


def _cookie_pairs(header: str) -> list[str]:
    return [p.strip() for p in header.split(";") if p.strip()]


def _cookie_name(pair: str) -> str:
    return pair.partition("=")[0].strip()


def _query_name(part: str) -> str:
    return unquote_plus(part.partition("=")[0])


def find(http: Http, source: Source) -> Found | None:
    """The credential in `source`, None if absent; raises Ambiguous if there are several."""
    values: list[str] = []
    request = http.request
    if source.header:
        for value in request.headers.get_all(source.header):
            token = _after_prefix(value, source.prefix) if source.prefix else value.strip()
            if token is not None:
                values.append(token)
    elif source.cookie:
        for header in request.headers.get_all("cookie"):
            for pair in _cookie_pairs(header):
                name, _, value = pair.partition("=")
                if name.strip() == source.cookie:
                    values.append(value.strip().strip('"'))
    else:
        _, sep, query = request.path.partition("?")
        for part in query.split("&") if sep else ():
            if part and _query_name(part) == source.query:
                values.append(unquote_plus(part.partition("=")[2]))
    if not values:
        return None
    if len(values) > 1:
        raise Ambiguous(source.describe())
    return Found(values[0], source)
