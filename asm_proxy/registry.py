"""Finding the class behind a plugin `type`.

In this order: the built-ins in asm_proxy.handlers, then installed packages' entry points
in the group `asm_proxy.plugins` (the way pytest finds its plugins), then a direct import
path `package.module:Class` for a plugin that is not packaged.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from asm_proxy.handlers import BUILTINS
from asm_proxy.plugin import Plugin

ENTRY_POINT_GROUP = "asm_proxy.plugins"


class UnknownPluginType(LookupError):
    pass


def _load(target: str, what: str) -> type[Plugin]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownPluginType(f"{what}: {target!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownPluginType(f"{what}: cannot import {module_name!r}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownPluginType(f"{what}: {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise UnknownPluginType(f"{what}: {target!r} is not a subclass of asm_proxy.Plugin")
    return obj


def installed_types() -> dict[str, str]:
    """Every type name that can be used without an import path, with where it comes from."""
    found = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def resolve(type_name: str) -> type[Plugin]:
    if type_name in BUILTINS:
        return _load(BUILTINS[type_name], f"built-in plugin {type_name!r}")
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        return _load(
            ep.value, f"plugin {type_name!r} (entry point of {ep.dist.name if ep.dist else '?'})"
        )
    if ":" in type_name:
        return _load(type_name, f"plugin class {type_name!r}")
    known = ", ".join(sorted(installed_types()))
    raise UnknownPluginType(
        f"unknown plugin type {type_name!r} (known: {known}; or give package.module:Class)"
    )
