"""Finding the class behind a plugin `type`.

A type is either a name registered by an installed distribution under the entry point group
`asm_proxy.plugins` (the way pytest finds its plugins; the built-ins of asm-proxy-handlers
are found exactly this way), or a direct import path `package.module:Class` for a plugin
that is not packaged. A class that cannot work (a misspelt hook, a hook with the wrong
arguments) fails to import, and the error names it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from asm_proxy.plugin import Plugin

ENTRY_POINT_GROUP = "asm_proxy.plugins"


class UnknownPluginType(LookupError):
    """A `type` that names no usable plugin class; the message says why."""


def _load(target: str, what: str) -> type[Plugin]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownPluginType(f"{what}: {target!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownPluginType(f"{what}: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # a class refused at definition (PluginDefinitionError), a bug
        raise UnknownPluginType(
            f"{what}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownPluginType(f"{what}: {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise UnknownPluginType(f"{what}: {target!r} is not a subclass of asm_proxy.api.Plugin")
    return obj


_cache: dict[str, EntryPoint] | None = None


def _registered(*, fresh: bool = False) -> dict[str, EntryPoint]:
    """The registered types. Scanning every installed distribution's metadata costs tens of
    milliseconds, so it is done once per process and again only for a name not found (a
    package installed since)."""
    global _cache
    if _cache is None or fresh:
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep)
        _cache = found
    return _cache


def installed_types() -> dict[str, str]:
    """Every type name usable without an import path, with the class it stands for."""
    return {name: ep.value for name, ep in sorted(_registered(fresh=True).items())}


def provider(type_name: str) -> str | None:
    """The distribution (name and version) that registers `type_name`, if one does."""
    ep = _registered().get(type_name)
    if ep is None or ep.dist is None:
        return None
    return f"{ep.dist.name} {ep.dist.version}"


def resolve(type_name: str) -> type[Plugin]:
    ep = _registered().get(type_name)
    if ep is None and ":" not in type_name:
        ep = _registered(fresh=True).get(type_name)
    if ep is not None:
        source = ep.dist.name if ep.dist is not None else "?"
        return _load(ep.value, f"plugin {type_name!r} (entry point of {source})")
    if ":" in type_name:
        return _load(type_name, f"plugin class {type_name!r}")
    known = ", ".join(installed_types()) or "none installed"
    raise UnknownPluginType(
        f"unknown plugin type {type_name!r} (known: {known}; or give package.module:Class)"
    )
