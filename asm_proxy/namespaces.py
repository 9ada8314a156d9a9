"""Per-namespace plugin files: one asm-proxy serving many teams, each confined to its own.

In node and central mode one asm-proxy serves the workloads of many namespaces. The main
config names a directory (`namespaces: {directory: ...}`, typically a ConfigMap a GitOps
tool fills); `DIRECTORY/NAMESPACE.yaml` holds only `plugins:`, and each of them applies
only to workloads proven to be in NAMESPACE (the certificate's SPIFFE ID in central mode,
the node metadata Envoy sends in node mode). The root namespace's file (`istio-system` by
default) applies to every workload, as Istio treats EnvoyFilters in its root namespace.

A namespace file may narrow its plugins with `selector.matchLabels`, never widen them:
a selector naming another namespace is refused (by `validate` too). Each file is accepted
or refused on its own, and a refused file keeps its namespace's last good plugins, so one
team's bad edit never touches another team. A namespace whose file has never loaded (it is
broken when asm-proxy starts) fails closed: its workloads get 503 until it is fixed, rather
than running without the plugins (auth among them) the file asks for. Deleting a file
removes its namespace's plugins: the directory's listing is what is configured.

The result is composed into one config (the main file's settings and plugins, then the
root's, then each namespace's, named `NAMESPACE/NAME`) that the workers load like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from asm_proxy.api import Http, Plugin, PluginConfig, Respond
from asm_proxy.config import (
    ConfigError,
    ConfigProblem,
    NamespaceSettings,
    decode_config,
    parse_file,
    read_config_bytes,
    read_config_text,
)
from asm_proxy.loader import Loaded, build_chain, load_text

log = logging.getLogger("asm_proxy.namespaces")

#: A Kubernetes namespace name (an RFC 1123 label).
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SUFFIXES = (".yaml", ".yml")
#: The plugin type that answers for a namespace whose file never loaded.
REFUSED_TYPE = "asm_proxy.namespaces:RefusedNamespace"


def directory_of(settings: NamespaceSettings, config_path: str | Path) -> Path:
    """The namespace directory; a relative one is read from the config file's directory."""
    directory = Path(settings.directory)
    return directory if directory.is_absolute() else Path(config_path).parent / directory


def listing(directory: Path) -> dict[str, Path]:
    """NAMESPACE -> file for every `NAMESPACE.yaml` (or `.yml`) in `directory`. Hidden
    entries (a ConfigMap's `..data` and timestamped directories) are not namespaces."""
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(directory), None, None, "namespaces.directory", f"{exc.strerror}")]
        ) from None
    found: dict[str, Path] = {}
    for name in names:
        if name.startswith("."):
            continue
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                found.setdefault(name[: -len(suffix)], directory / name)
    return found


def check_file(path: Path, namespace: str, text: str, *, root: str) -> list[dict[str, Any]]:
    """The file's plugin entries as the composed config carries them (named and confined
    to `namespace`); raises ConfigError naming file, line, plugin and field otherwise."""
    name = str(path)
    if not NAMESPACE_NAME.match(namespace):
        raise ConfigError(
            [
                ConfigProblem(
                    name,
                    None,
                    None,
                    "",
                    f"{namespace!r} is not a namespace name: name the file NAMESPACE.yaml",
                )
            ]
        )
    parsed = parse_file(path, text)
    # Settings in a namespace file get the one message below, not the settings' checks.
    parsed = replace(
        parsed,
        problems=[p for p in parsed.problems if p.plugin or p.field.startswith("plugins")],
    )
    problems = [
        ConfigProblem(
            name,
            parsed.lines.line((key,)),
            None,
            str(key),
            "a namespace file holds only `plugins:`; server settings belong in the main config",
        )
        for key in parsed.raw
        if key != "plugins"
    ]
    if namespace != root:
        for index, entry in parsed.entries:
            outside = sorted(set(entry.selector.namespaces if entry.selector else ()) - {namespace})
            if outside:
                problems.append(
                    ConfigProblem(
                        name,
                        parsed.lines.line(("plugins", index, "selector")),
                        f'plugins[{index}] "{entry.name}"',
                        "selector.namespaces",
                        f"{', '.join(outside)} is outside namespace {namespace!r}: a plugin "
                        f"in {namespace}'s file applies only to workloads in {namespace}",
                    )
                )
    try:
        build_chain(parsed)  # every type and plugin config, as `validate` checks them
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(sorted(dict.fromkeys(problems), key=lambda p: p.line or 0))
    return [_scoped(raw, namespace, root) for raw in parsed.raw.get("plugins") or []]


def _scoped(raw: dict[str, Any], namespace: str, root: str) -> dict[str, Any]:
    entry = dict(raw)
    entry["name"] = f"{namespace}/{raw['name']}"
    if namespace != root:
        selector = {k: v for k, v in (raw.get("selector") or {}).items() if k != "namespace"}
        selector["namespaces"] = [namespace]
        entry["selector"] = selector
    return entry


def refused_entry(namespace: str, path: str) -> dict[str, Any]:
    """Fails the namespace's requests closed while its file has never loaded."""
    return {
        "name": f"{namespace}/config-refused",
        "type": REFUSED_TYPE,
        "phase": "AUTHN",
        "priority": 1 << 30,
        "selector": {"namespaces": [namespace]},
        "config": {"namespace": namespace, "file": path},
    }


def compose(main_text: str, namespaces: Mapping[str, list[dict[str, Any]]]) -> str:
    """The main file with every namespace's plugins after its own, as one config."""
    raw = yaml.safe_load(main_text)
    plugins = list(raw.get("plugins") or [])
    for namespace in sorted(namespaces):
        plugins += namespaces[namespace]
    raw["plugins"] = plugins
    return yaml.safe_dump(raw, sort_keys=False)


def load_all(config_path: str | Path, directory: str | Path | None = None) -> Loaded:
    """The config with every namespace file's plugins, as `serve` composes it; any refused
    file raises ConfigError (with every problem of every file). For `validate`, `render`
    and `diagnose`, which judge what is meant to run, not what runs despite mistakes.
    `directory` stands for `namespaces.directory` (the files as checked out, not where the
    pod mounts them)."""
    main = read_config_text(config_path)  # read once: what is checked is what is composed
    loaded = load_text(config_path, main)
    settings = loaded.settings.namespaces
    if settings is None:
        return loaded
    where = Path(directory) if directory is not None else directory_of(settings, config_path)
    problems: list[ConfigProblem] = []
    entries: dict[str, list[dict[str, Any]]] = {}
    for namespace, path in listing(where).items():
        try:
            text = read_config_text(path)
            entries[namespace] = check_file(path, namespace, text, root=settings.root_namespace)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return load_text(config_path, compose(main, entries))


@dataclass(frozen=True, slots=True)
class _Accepted:
    digest: str
    entries: list[dict[str, Any]]


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


class NamespaceFiles:
    """The namespace directory as last accepted, file by file.

    `refresh()` reads the directory; a file is looked at only once it has stood still for
    `settle` seconds (the same bytes, or still absent, on two reads), so a half-written
    file is never taken. It returns True when what the workers should run has changed."""

    def __init__(self, settings: NamespaceSettings, config_path: str | Path) -> None:
        self.settings = settings
        self.directory = directory_of(settings, config_path)
        self.root = settings.root_namespace
        self._accepted: dict[str, _Accepted] = {}
        self._refused: dict[str, str] = {}  # namespace -> file, never accepted
        self._seen: dict[str, str] = {}  # namespace -> digest last judged
        self._unusable: dict[str, str] = {}  # namespace -> why its file cannot be read

    def entries(self) -> dict[str, list[dict[str, Any]]]:
        """Every namespace's plugin entries as the composed config carries them."""
        out = {ns: accepted.entries for ns, accepted in self._accepted.items()}
        for namespace, path in self._refused.items():
            out[namespace] = [refused_entry(namespace, path)]
        return out

    def load(self) -> list[ConfigProblem]:
        """First read, at start: every file judged now; the problems of refused ones."""
        files = listing(self.directory)
        problems: list[ConfigProblem] = []
        for namespace, path in files.items():
            problems += self._judge(namespace, path, self._read(namespace, path))
        return problems

    async def refresh(self, settle: float) -> bool:
        try:
            first = self._snapshot()
        except ConfigError as exc:
            log.warning("%s; namespace plugins stay as they are", exc)
            return False
        changed = {
            ns: data
            for ns, (_, data) in first.items()
            if _digest(data) != self._seen.get(ns) and not (data is None and ns in self._unusable)
        }
        gone = set(self._seen) - set(first)
        if not changed and not gone:
            return False
        await asyncio.sleep(settle)
        try:
            second = self._snapshot()
        except ConfigError:
            return False
        before = self.entries()
        for namespace in gone - set(second):
            self._forget(namespace)
        for namespace, data in changed.items():
            if namespace not in second or second[namespace][1] != data:
                continue  # still changing: the next poll looks again
            path, _ = second[namespace]
            for problem in self._judge(namespace, path, data):
                log.error("%s", problem)
        return self.entries() != before

    def _snapshot(self) -> dict[str, tuple[Path, bytes | None]]:
        return {ns: (path, self._read(ns, path)) for ns, path in listing(self.directory).items()}

    def _read(self, namespace: str, path: Path) -> bytes | None:
        """The file's bytes, or None if it cannot be read (said at WARNING once)."""
        try:
            data = read_config_bytes(path)
        except ConfigError as exc:
            why = "; ".join(p.message for p in exc.problems)
            if self._unusable.get(namespace) != why:
                log.warning(
                    "namespace file %s cannot be used (%s); namespace %s keeps its plugins",
                    path,
                    why,
                    namespace,
                )
                self._unusable[namespace] = why
            return None
        if self._unusable.pop(namespace, None) is not None:
            log.warning("namespace file %s is usable again", path)
        return data

    def _judge(self, namespace: str, path: Path, data: bytes | None) -> list[ConfigProblem]:
        """Accept the file or keep what the namespace had; the problems if refused."""
        if data is None:
            return []  # unreadable: said by _read; the last good plugins stay
        digest = _digest(data)
        assert digest is not None
        self._seen[namespace] = digest
        if namespace in self._accepted and self._accepted[namespace].digest == digest:
            return []
        try:
            entries = check_file(path, namespace, decode_config(path, data), root=self.root)
        except ConfigError as exc:
            if namespace in self._accepted:
                kept = "its last good plugins stay"
            else:
                self._refused[namespace] = str(path)
                kept = "its workloads are refused (503) until it loads"
            log.error(
                "namespace file %s refused; %s:\n%s",
                path,
                kept,
                "\n".join(f"  {p}" for p in exc.problems),
            )
            return exc.problems
        self._accepted[namespace] = _Accepted(digest, entries)
        self._refused.pop(namespace, None)
        log.info(
            "namespace %s: %s",
            namespace,
            ", ".join(e["name"] for e in entries) or "no plugins",
        )
        return []

    def _forget(self, namespace: str) -> None:
        self._seen.pop(namespace, None)
        self._unusable.pop(namespace, None)
        self._refused.pop(namespace, None)
        if self._accepted.pop(namespace, None) is not None:
            log.warning(
                "namespace file %s/%s.yaml was removed: namespace %s's plugins are gone",
                self.directory,
                namespace,
                namespace,
            )


class RefusedNamespaceConfig(PluginConfig):
    namespace: str
    file: str


class RefusedNamespace(Plugin):
    """Answers 503 for a namespace whose plugin file has never loaded."""

    Config = RefusedNamespaceConfig

    def __init__(self, config: RefusedNamespaceConfig) -> None:
        super().__init__(config)
        self.response = Respond(
            status=503,
            body=f"asm-proxy: the plugin config of namespace {config.namespace} is refused\n",
            details="asm_proxy_namespace_config_refused",
        )

    def on_request_headers(self, http: Http) -> Respond:
        return self.response
