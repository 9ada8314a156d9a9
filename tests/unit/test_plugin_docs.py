"""docs/plugins/*.md stay true: their configs load, their Envoy snippets match Envoy's
schema, their examples behave as shown, and every config field is documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import BaseModel

from asm_proxy.loader import load
from asm_proxy.plugin import Plugin
from asm_proxy.testing import PluginHost
from asm_proxy_handlers.body_log import BodyLogPlugin
from asm_proxy_handlers.consul import ConsulPlugin
from asm_proxy_handlers.eureka import EurekaPlugin
from asm_proxy_handlers.nacos import NacosPlugin
from asm_proxy_handlers.nacos_grpc import NacosGrpcPlugin
from asm_proxy_handlers.reverse_dns import ReverseDnsPlugin
from tests.support.envoy_snippets import validate_snippets

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins"
BLOCK = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```(?:yaml|json)\n(?P<text>.*?)```", re.S)
PLUGINS: dict[str, type[Plugin]] = {
    "nacos": NacosPlugin,
    "reverse_dns": ReverseDnsPlugin,
    "body_log": BodyLogPlugin,
    "eureka": EurekaPlugin,
    "consul": ConsulPlugin,
}


def blocks(doc: str) -> dict[str, str]:
    text = (DOCS / f"{doc}.md").read_text()
    found = {m.group("name"): m.group("text") for m in BLOCK.finditer(text)}
    assert found, f"docs/plugins/{doc}.md has no tested blocks"
    return found


@pytest.mark.parametrize("doc", sorted(PLUGINS))
def test_example_config_loads(doc: str, tmp_path: Path) -> None:
    """The example asm-proxy config is valid and builds the documented plugin."""
    path = tmp_path / "config.yaml"
    path.write_text(blocks(doc)["asm-proxy"])
    loaded = load(path)
    (entry,) = loaded.chain.entries
    assert entry.type_name == doc
    assert isinstance(entry.plugin, PLUGINS[doc])


@pytest.mark.parametrize("doc", sorted(PLUGINS))
def test_envoy_snippets_load_in_envoy(doc: str) -> None:
    """The Envoy-side blocks are accepted by the real Envoy."""
    found = blocks(doc)
    access_logs = [yaml.safe_load(found["access_log"])] if "access_log" in found else []
    validate_snippets(filters=[yaml.safe_load(found["ext_proc"])], access_logs=access_logs)


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        shown = prefix + (info.alias or name)
        annotation: Any = info.annotation
        nested = [
            c
            for c in getattr(annotation, "__args__", (annotation,))
            if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        if not nested:
            names.append(shown)
        for model_type in nested:
            names += _fields(model_type, shown + ".")
    return names


@pytest.mark.parametrize("doc", sorted(PLUGINS))
def test_every_field_is_documented(doc: str) -> None:
    """Each config field (nested ones as parent.child) is named in the doc."""
    assert len(_fields(PLUGINS[doc].Config)) >= 7
    text = (DOCS / f"{doc}.md").read_text()
    for field in _fields(PLUGINS[doc].Config):
        leaf = field.rsplit(".", 1)[-1]
        assert f"`{field}`" in text or f"`{leaf}`" in text, f"{field} is not in {doc}.md"


def test_nacos_example_answer() -> None:
    """The nacos page's before/after answers are what the plugin really does."""
    found = blocks("nacos")
    host = PluginHost.from_yaml(found["asm-proxy"])
    answer = found["nacos-answer"].strip().encode()
    path = "/nacos/v1/ns/instance/list?serviceName=DEFAULT_GROUP%40%40provider&namespaceId=0b9f7e3c-shop"
    host.request_headers({":path": path})
    host.response_headers({"content-type": "application/json", "content-length": str(len(answer))})
    (step,) = host.response_body(answer)
    assert step.body == found["client-gets"].strip().encode()
    assert orjson.loads(step.body)["hosts"][0]["ip"] == "provider.shop.svc.cluster.local"


def test_nacos_grpc_blocks(tmp_path: Path) -> None:
    """nacos.md's gRPC part: its config loads, its filter and cluster load in Envoy, and
    every field of nacos_grpc is named."""
    found = blocks("nacos")
    path = tmp_path / "config.yaml"
    path.write_text(found["asm-proxy-grpc"])
    (entry,) = load(path).chain.entries
    assert isinstance(entry.plugin, NacosGrpcPlugin)
    validate_snippets(
        filters=[yaml.safe_load(found["ext_proc-grpc"])],
        clusters=[yaml.safe_load(found["cluster-grpc"])],
    )
    text = (DOCS / "nacos.md").read_text()
    for field in _fields(NacosGrpcPlugin.Config):
        assert f"`{field}`" in text, f"{field} is not in nacos.md"
