"""Helpers of the auth plugin's unit tests (fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

from asm_proxy.api import Phase
from asm_proxy.testing import PluginHost, Step
from asm_proxy_handlers.auth import AuthPlugin
from tests.support.jwks import AUDIENCE, ISSUER


def provider(url: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "idp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "PS256", "ES256"],
        "jwksUri": url,
        "minRefetchInterval": "1s",
        "fetchTimeout": "2s",
        "claimsToHeaders": {"x-user": "sub", "x-groups": "groups"},
    }
    base.update(overrides)
    return base


class Hosts:
    """Builds PluginHosts for the auth plugin and closes them after the test."""

    def __init__(self) -> None:
        self.made: list[PluginHost] = []

    def __call__(self, config: dict[str, Any], **entry: Any) -> PluginHost:
        host = PluginHost(AuthPlugin, config, name="auth", phase=Phase.AUTHN, **entry)
        self.made.append(host)
        return host

    def close(self) -> None:
        for host in self.made:
            host.close()


def plugin_of(host: PluginHost) -> AuthPlugin:
    plugin = host.chain.entries[0].plugin
    assert isinstance(plugin, AuthPlugin)
    return plugin


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def denied(step: Step, status: int = 401) -> Any:
    assert step.immediate is not None, "expected a denial"
    assert step.immediate.status == status, step.immediate
    return step.immediate


def allowed(step: Step) -> Step:
    assert step.immediate is None, step.immediate
    return step


def auth_metadata(step: Step) -> dict[str, Any]:
    result: dict[str, Any] = step.metadata["asm-proxy"]["auth"]
    return result
