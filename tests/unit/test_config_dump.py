"""/config_dump's redaction and the admin endpoint's loopback rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from asm_proxy.admin import _loopback
from asm_proxy.api import Http, Plugin, PluginConfig
from asm_proxy.config import ConfigError
from asm_proxy.config_dump import REDACTED, dump_config, redact, secret_key
from asm_proxy.loader import load_text
from asm_proxy.testing import check_config


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("clientSecret", True),
        ("api_key", True),
        ("sha256", True),
        ("accessToken", True),
        ("hmacSecretFile", False),  # where the secret is, not the secret
        ("tokenHeader", False),
        ("jwksUri", False),
        ("redactKeys", False),
        ("consumer", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert secret_key(key) is secret


def test_redact_walks_sections_and_lists() -> None:
    """Strings under a secret key and lists of them go; numbers and booleans stay; a
    mapping under a secret-sounding section is judged by its own keys."""
    data: dict[str, Any] = {
        "apiKeys": {"keys": [{"consumer": "ci", "sha256": "ab" * 32}], "forwardKey": False},
        "passwords": ["p1", "p2"],
        "maxTokenBytes": 8192,
        "hmacSecretFile": "/etc/secret/hmac",
    }
    assert redact(data) == {
        "apiKeys": {"keys": [{"consumer": "ci", "sha256": REDACTED}], "forwardKey": False},
        "passwords": [REDACTED, REDACTED],
        "maxTokenBytes": 8192,
        "hmacSecretFile": "/etc/secret/hmac",
    }


class Vault(Plugin):
    class Config(PluginConfig):
        login: str
        unlock: SecretStr

    def on_request_headers(self, http: Http) -> None: ...


def test_a_plugins_secretstr_fields_are_redacted() -> None:
    """A field typed SecretStr is redacted whatever its name."""
    text = (
        "plugins:\n"
        "  - name: vault\n"
        "    type: tests.unit.test_config_dump:Vault\n"
        "    config: {login: ops, unlock: open-sesame}\n"
    )
    dump = dump_config(text, load_text("x.yaml", text))
    assert dump["config"]["plugins"][0]["config"] == {"login": "ops", "unlock": REDACTED}
    assert "open-sesame" not in str(dump)
    assert dump["chain"][0]["class"] == "tests.unit.test_config_dump:Vault"
    assert len(dump["hash"]) == 16


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.1", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        (("10.1.2.3", 5000), False),
        (("::ffff:10.1.2.3", 5000, 0, 0), False),
        (None, False),
    ],
)
def test_loopback_peers(peer: Any, loopback: bool) -> None:
    assert _loopback(peer) is loopback


def test_admin_address_rules() -> None:
    """Loopback by default; another address only when explicitly allowed."""
    assert check_config("admin: {listen: '[::1]:9902'}\nplugins: []\n").problems == []
    assert check_config("admin: {listen: 'localhost:9902'}\nplugins: []\n").problems == []
    refused = check_config("admin: {listen: '0.0.0.0:9902'}\nplugins: []\n").problems
    assert len(refused) == 1 and "allowNonLoopback" in refused[0]
    allowed = "admin: {listen: '0.0.0.0:9902', allowNonLoopback: true}\nplugins: []\n"
    assert check_config(allowed).problems == []
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_text("x.yaml", "admin: {listen: nowhere}\nplugins: []\n")
