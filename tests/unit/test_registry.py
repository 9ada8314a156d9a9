"""Finding plugin classes: built-ins, entry points, import paths."""

from __future__ import annotations

import pytest

from asm_proxy.registry import UnknownPluginType, installed_types, resolve
from asm_proxy_handlers.headers import HeadersPlugin
from tests.support.plugins import Raiser


def test_builtin() -> None:
    """Built-ins resolve by name."""
    assert resolve("headers") is HeadersPlugin


def test_import_path() -> None:
    """An unpackaged plugin resolves by package.module:Class."""
    assert resolve("tests.support.plugins:Raiser") is Raiser


def test_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed packages' entry points in group asm_proxy.plugins are found by name."""
    from importlib.metadata import EntryPoint

    ep = EntryPoint("raiser", "tests.support.plugins:Raiser", "asm_proxy.plugins")

    def fake_entry_points(**kw):
        if kw.get("group") == "asm_proxy.plugins" and kw.get("name") in (None, "raiser"):
            return [ep]
        return []

    monkeypatch.setattr("asm_proxy.registry.entry_points", fake_entry_points)
    assert resolve("raiser") is Raiser
    assert "raiser" in installed_types()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown plugin type 'nope'"),
        ("no.such.module:X", "cannot import"),
        ("tests.support.plugins:Missing", "has no attribute"),
        ("tests.support.plugins:Field", "not a subclass"),
    ],
)
def test_unknown(name: str, message: str) -> None:
    """Unknown types are errors that say why."""
    with pytest.raises(UnknownPluginType, match=message):
        resolve(name)
