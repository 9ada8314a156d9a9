"""docs/plugins/auth.md stays true: every YAML block on it loads.

asm-proxy configs are parsed and built into a chain (plugins constructed, secrets files
read and checked); Envoy snippets are parsed into Envoy's own protobuf types; the API key
file and the htpasswd example are parsed by the plugin's own parsers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asm_proxy.config import parse_file
from asm_proxy.loader import build_chain
from asm_proxy_handlers.auth.keyfiles import parse_htpasswd, parse_key_file
from tests.support.envoy_snippets import validate_snippets
from tests.support.jwks import ec_key, ed_key, jwks

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "plugins" / "auth.md").read_text()
BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
YAML_BLOCKS = [m.group("body") for m in BLOCK.finditer(DOC) if m.group("lang") == "yaml"]
PLAIN_BLOCKS = [m.group("body") for m in BLOCK.finditer(DOC) if m.group("lang") == ""]
SECRETS = "/etc/asm-proxy/secrets/"


def _block(kind: str) -> str:
    for body in YAML_BLOCKS:
        if kind == "api-keys" and body.startswith("keys:"):
            return body
    for body in PLAIN_BLOCKS:
        if kind == "htpasswd" and "/htpasswd" in body:
            return body
    raise AssertionError(f"the doc has no {kind} example")


def secrets_dir(tmp_path: Path) -> Path:
    """The files the doc's configs name, made from the doc's own examples where it has
    them (the API key file, the htpasswd file)."""
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(ec_key("p1"), ed_key("p2"))))
    (tmp_path / "hmac-secret").write_bytes(b"h" * 64 + b"\n")
    (tmp_path / "api-keys.yaml").write_text(_block("api-keys"))
    (tmp_path / "htpasswd").write_text(_block("htpasswd"))
    return tmp_path


def _envoy(doc: Any) -> None:
    """Envoy itself loads the snippet (a cluster, or filters and access logs)."""
    if isinstance(doc, dict):
        validate_snippets(clusters=[doc])
        return
    logs = [item for item in doc if item["name"].startswith("envoy.access_loggers.")]
    filters = [item for item in doc if item not in logs]
    validate_snippets(filters=filters, access_logs=logs)


def kind_of(doc: Any) -> str:
    if isinstance(doc, dict) and "plugins" in doc:
        return "asm-proxy config"
    if isinstance(doc, dict) and set(doc) == {"keys"}:
        return "api key file"
    if isinstance(doc, dict) and "load_assignment" in doc:
        return "envoy cluster"
    if isinstance(doc, list) and all(str(i.get("name", "")).startswith("envoy.") for i in doc):
        return "envoy filters"
    raise AssertionError(f"a YAML block on the page is of no known kind: {doc!r:.200}")


def test_the_doc_has_every_kind_of_example() -> None:
    """Configs for JWT, API keys and Basic, the Envoy side of both filters, a key file."""
    kinds = [kind_of(yaml.safe_load(b)) for b in YAML_BLOCKS]
    assert kinds.count("asm-proxy config") >= 5
    assert {"api key file", "envoy cluster", "envoy filters"} <= set(kinds)
    for needle in (
        "jwksUri:",
        "jwksFile:",
        "hmacSecretFile:",
        "apiKeys:",
        "htpasswdFile:",
        "rules:",
        "dryRun: true",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ext_proc",
    ):
        assert any(needle in b for b in YAML_BLOCKS), needle


@pytest.mark.parametrize("index", range(len(YAML_BLOCKS)))
def test_yaml_example_loads(index: int, tmp_path: Path) -> None:
    """Each YAML block loads as what it is."""
    body = YAML_BLOCKS[index]
    kind = kind_of(yaml.safe_load(body))
    if kind == "asm-proxy config":
        text = body.replace(SECRETS, str(secrets_dir(tmp_path)) + "/")
        chain = build_chain(parse_file("docs/plugins/auth.md", text))
        assert any(e.type_name == "auth" for e in chain.entries)
    elif kind == "api key file":
        assert len(parse_key_file(body.encode())) == 2
    else:
        _envoy(yaml.safe_load(body))


def test_htpasswd_example_parses() -> None:
    """The htpasswd example is accepted at the default minimum cost (10)."""
    assert list(parse_htpasswd(_block("htpasswd").encode(), 10)) == ["alice"]
