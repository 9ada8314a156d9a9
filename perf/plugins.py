"""Plugins used only by the benchmarks (configs name them `perf.plugins:...`)."""

from __future__ import annotations

from asm_proxy.api import Http, Plugin


class WholeBody(Plugin):
    """Needs the whole request body (so asm-proxy asks Envoy to buffer it) and reads it as
    one bytes object, as a validating or rewriting plugin would; changes nothing."""

    def on_request_body(self, http: Http) -> None:
        data = http.request.body.data
        if data[:1] == b"\x00":
            http.request.headers.set("x-body-starts-with-nul", "1")
