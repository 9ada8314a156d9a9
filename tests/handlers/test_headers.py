"""The `headers` built-in, tested through the shared test host."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from asm_proxy.testing import PluginHost, mode_of
from asm_proxy_handlers.headers import HeadersPlugin

CONFIG = {
    "request": {"set": {"x-tenant": "blue"}, "remove": ["x-debug"], "append": {"x-via": "asm"}},
    "response": {"set": {"x-served-by": "asm-proxy"}},
}


def test_request_headers() -> None:
    """Sets, removes and appends request headers."""
    host = PluginHost(HeadersPlugin, CONFIG)
    step = host.request_headers({"x-debug": "1", "x-via": "edge"})
    assert step.headers["x-tenant"] == "blue"
    assert "x-debug" not in step.headers
    assert step.headers.get_all("x-via") == ["edge", "asm"]


def test_response_headers() -> None:
    """Sets response headers."""
    host = PluginHost(HeadersPlugin, CONFIG)
    host.request_headers()
    step = host.response_headers({"content-type": "text/plain"})
    assert step.headers["x-served-by"] == "asm-proxy"


def test_request_only_config_skips_the_response() -> None:
    """With no response changes configured, Envoy is told not to send the response."""
    host = PluginHost(HeadersPlugin, {"request": {"set": {"x-a": "1"}}})
    assert mode_of(host.request_headers())["response_header_mode"] == "SKIP"


def test_bad_config_is_refused() -> None:
    """Header injection in a configured value is refused at load time."""
    with pytest.raises(ValidationError, match="forbidden"):
        HeadersPlugin.Config.model_validate({"request": {"set": {"x-a": "1\r\nx-b: 2"}}})
