"""From a config file to a ready chain, or to a list of everything wrong with the file.

Used the same way by `asm-proxy validate`, by `serve` at start and by hot reload, so a
file is refused with the same messages everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from asm_proxy.chain import Chain, Entry
from asm_proxy.config import (
    ConfigError,
    ConfigProblem,
    ParsedFile,
    ServerSettings,
    config_key,
    describe_plugin,
    parse_file,
    problems_from_validation,
)
from asm_proxy.matching import compile_match, compile_selector
from asm_proxy.plugin import FailStrategy, Plugin, PluginDefinitionError, prepare
from asm_proxy.registry import UnknownPluginType, resolve
from asm_proxy.tls import CertificateFiles, TlsError


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: ServerSettings
    chain: Chain
    #: Things that load but are probably not meant (same shape as problems, not fatal).
    warnings: tuple[ConfigProblem, ...] = ()


def _make_plugin(
    parsed: ParsedFile, index: int, type_name: str, raw_config: Any, problems: list[ConfigProblem]
) -> Plugin | None:
    """Resolve the type, validate the plugin's config and construct it; None on problems."""
    raw_entry = parsed.raw["plugins"][index]
    who = describe_plugin(index, raw_entry)
    try:
        cls = resolve(type_name)
    except UnknownPluginType as exc:
        line = parsed.lines.line(("plugins", index, "type"))
        problems.append(ConfigProblem(parsed.path, line, who, "type", str(exc)))
        return None
    key = config_key(raw_entry)
    try:
        config = cls.Config.model_validate(raw_config or {})
    except ValidationError as exc:
        problems += problems_from_validation(
            exc,
            file=parsed.path,
            lines=parsed.lines,
            raw=parsed.raw,
            prefix=("plugins", index, key),
            plugin=who,
        )
        return None
    try:
        plugin = cls(config)
    except Exception as exc:  # a plugin refusing its config in __init__
        line = parsed.lines.line(("plugins", index, key))
        problems.append(ConfigProblem(parsed.path, line, who, key, f"{type(exc).__name__}: {exc}"))
        return None
    name = raw_entry.get("name") if isinstance(raw_entry, dict) else None
    try:
        prepare(plugin, name if isinstance(name, str) else type_name)
    except PluginDefinitionError as exc:  # what __init__ did to `hooks` cannot work
        line = parsed.lines.line(("plugins", index, "type"))
        problems.append(ConfigProblem(parsed.path, line, who, "type", str(exc)))
        return None
    return plugin


def build_chain(parsed: ParsedFile) -> Chain:
    """Resolve every plugin type, validate its config, construct it; all problems at once."""
    problems: list[ConfigProblem] = list(parsed.problems)
    entries: list[Entry] = []
    valid = {index for index, _ in parsed.entries}
    # Entries that failed their own checks still get their plugin config checked, so one
    # run of `validate` lists everything.
    for index, raw_entry in enumerate(parsed.raw.get("plugins") or []):
        if index in valid or not isinstance(raw_entry, dict):
            continue
        type_name = raw_entry.get("type")
        raw_config = raw_entry.get(config_key(raw_entry))
        if isinstance(type_name, str) and isinstance(raw_config, dict | None):
            _make_plugin(parsed, index, type_name, raw_config, problems)
    for index, spec in parsed.entries:
        if not spec.enabled:
            continue
        plugin = _make_plugin(parsed, index, spec.type, spec.config, problems)
        if plugin is None:
            continue
        entries.append(
            Entry(
                index=index,
                name=spec.name,
                type_name=spec.type,
                plugin=plugin,
                phase=spec.phase,
                priority=spec.priority,
                fail_strategy=spec.fail_strategy,
                timeout=spec.timeout,
                matches=compile_match(spec.match),
                selects=compile_selector(spec.selector),
                selector=spec.selector,
            )
        )
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    via_ext_authz = parsed.settings is not None and parsed.settings.authz_via == "ext_authz"
    return Chain(entries, source=parsed.path, authz_via_ext_authz=via_ext_authz)


def warnings_for(parsed: ParsedFile, chain: Chain) -> tuple[ConfigProblem, ...]:
    """FAIL_OPEN on a plugin that guards access: a failing hook would let requests in."""
    found = []
    for entry in chain.entries:
        if entry.plugin.guards_access and entry.fail_strategy is FailStrategy.FAIL_OPEN:
            raw_entry = parsed.raw["plugins"][entry.index]
            found.append(
                ConfigProblem(
                    parsed.path,
                    parsed.lines.line(("plugins", entry.index, "failStrategy")),
                    describe_plugin(entry.index, raw_entry),
                    "failStrategy",
                    f"warning: FAIL_OPEN on plugin type {entry.type_name!r} lets a request through "
                    "unchecked when its hook fails or overruns; FAIL_CLOSE is the safe choice",
                )
            )
    return tuple(found)


def load(path: str | Path) -> Loaded:
    """Parse, validate and build; raises ConfigError listing every problem."""
    return load_text(path, None)


def _tls_problems(parsed: ParsedFile) -> list[ConfigProblem]:
    """Certificate files that cannot serve: named at `tls`, as validate reports them."""
    settings = parsed.settings
    if settings is None or settings.tls is None:
        return []
    try:
        CertificateFiles(settings.tls)
    except TlsError as exc:
        return [ConfigProblem(parsed.path, parsed.lines.line(("tls",)), None, "tls", str(exc))]
    return []


def load_text(path: str | Path, text: str | None) -> Loaded:
    """`load`, with the file's content given (None: read it); problems name `path`."""
    parsed = parse_file(path, text)
    tls_problems = _tls_problems(parsed)
    if tls_problems:
        raise ConfigError(tls_problems)
    chain = build_chain(parsed)
    assert parsed.settings is not None  # build_chain raised otherwise
    return Loaded(settings=parsed.settings, chain=chain, warnings=warnings_for(parsed, chain))
