"""The `direct_response` built-in."""

from __future__ import annotations

from asm_proxy.testing import PluginHost
from asm_proxy_handlers.direct_response import DirectResponsePlugin


def test_answers_matching_requests() -> None:
    """Matching requests get the configured answer; others pass."""
    host = PluginHost(
        DirectResponsePlugin,
        {"status": 410, "body": "gone\n", "headers": {"content-type": "text/plain"}},
        match=[{"paths": [{"prefix": "/v1/"}]}],
    )
    step = host.request_headers({":path": "/v1/users"})
    assert step.immediate is not None
    assert (step.immediate.status, step.immediate.body) == (410, b"gone\n")
    assert step.immediate.headers["content-type"] == "text/plain"
    host.new_exchange()
    assert host.request_headers({":path": "/v2/users"}).immediate is None
