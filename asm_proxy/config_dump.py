"""The running config as data for /config_dump and /plugins, with every secret redacted.

A config holds secrets only in plugin configs: API key hashes, passwords, tokens, secrets
written inline. A value is redacted when its key names a secret (`password`, `secret`,
`token`, `apiKey`, `sha256`, ... in any case, with or without `-`/`_`) and is not a place
where the secret lives (`hmacSecretFile`, `tokenHeader`: a file or header name is worth
seeing), or when the plugin's config model types the field as pydantic's `SecretStr` /
`SecretBytes`. Numbers and booleans are never secrets (`maxTokenBytes`, `forwardToken`).
Redaction works on the text as the user wrote it, so the dump reads like the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from pydantic import SecretBytes, SecretStr

from asm_proxy.config import config_hash
from asm_proxy.registry import provider

if TYPE_CHECKING:
    from asm_proxy.chain import Chain
    from asm_proxy.loader import Loaded

REDACTED = "[REDACTED]"

#: Words that make a key's value a secret (keys are compared lower-case, without -_. ).
SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "session",
    "sha256",
    "hash",
    "bearer",
)
#: Endings that make a key the *location* of a secret, not the secret.
LOCATION_ENDINGS = (
    "file",
    "files",
    "uri",
    "url",
    "path",
    "header",
    "headers",
    "claim",
    "source",
    "sources",
    "prefix",
    "name",
)
_DROP = str.maketrans("", "", "-_. ")


def secret_key(key: str) -> bool:
    word = key.lower().translate(_DROP)
    return any(w in word for w in SECRET_WORDS) and not word.endswith(LOCATION_ENDINGS)


def redact(value: Any, *, secret: bool = False, also: frozenset[str] = frozenset()) -> Any:
    """`value` with secrets replaced by "[REDACTED]": the strings under a secret key, or in
    a list under one. A mapping under a secret key (`apiKeys: {keys: ...}`) is a section:
    its own keys decide."""
    if isinstance(value, dict):
        return {k: redact(v, secret=secret_key(str(k)) or str(k) in also) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secret=secret) for v in value]
    if secret and isinstance(value, str | bytes):
        return REDACTED
    return value


def secret_fields(config_class: type[Any]) -> frozenset[str]:
    """Top-level fields of a plugin's config model typed SecretStr / SecretBytes, under
    both their names and their camelCase aliases."""
    found: set[str] = set()
    for name, info in getattr(config_class, "model_fields", {}).items():
        if _is_secret_type(info.annotation):
            found.add(name)
            if info.alias:
                found.add(info.alias)
            alias_generator = config_class.model_config.get("alias_generator")
            if callable(alias_generator):
                found.add(alias_generator(name))
    return frozenset(found)


def _is_secret_type(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_is_secret_type(arg) for arg in getattr(annotation, "__args__", ()) or ())


def describe_plugins(chain: Chain) -> list[dict[str, Any]]:
    """Each plugin of `chain` in running order: its place and where its type comes from."""
    out = []
    for entry, described in zip(chain.entries, chain.describe(), strict=True):
        cls = type(entry.plugin)
        out.append(
            {
                **described,
                "class": f"{cls.__module__}:{cls.__qualname__}",
                "provider": provider(entry.type_name) or "import path",
                "metrics": [m.name for m in entry.plugin.declared_metrics],
            }
        )
    return out


def dump_config(text: str, loaded: Loaded) -> dict[str, Any]:
    """/config_dump's body for the config `text` that loaded as `loaded`."""
    raw = yaml.safe_load(text) or {}
    secrets_by_name = {e.name: secret_fields(type(e.plugin).Config) for e in loaded.chain.entries}
    plugins = []
    for item in raw.get("plugins") or []:
        if not isinstance(item, dict):
            continue
        item = dict(item)
        also = secrets_by_name.get(str(item.get("name")), frozenset())
        for key in ("config", "pluginConfig"):
            if key in item:
                item[key] = redact(item[key], also=also)
        plugins.append(redact(item))
    settings = {k: redact(v) if k != "plugins" else plugins for k, v in raw.items()}
    settings.setdefault("plugins", plugins)
    return {
        "file": str(loaded.chain.source),
        "hash": config_hash(text),
        "config": settings,
        "effective": loaded.settings.model_dump(mode="json", by_alias=True),
        "chain": describe_plugins(loaded.chain),
    }
