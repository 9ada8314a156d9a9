"""The config watcher notices edits and ConfigMap symlink swaps, and only real changes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from asm_proxy.reload import ConfigWatcher


def swap_data(root: Path, name: str, text: str) -> None:
    (root / name).mkdir()
    (root / name / "config.yaml").write_text(text)
    (root / "..tmp").symlink_to(name)
    os.replace(root / "..tmp", root / "..data")


def test_configmap_swap_and_edits(tmp_path: Path) -> None:
    """A ..data swap and an in-place edit are changes; a touch with the same content is not."""
    swap_data(tmp_path, "..v1", "a: 1\n")
    path = tmp_path / "config.yaml"
    path.symlink_to("..data/config.yaml")

    async def noop() -> None:
        return None

    watcher = ConfigWatcher(path, 1.0, noop)
    assert not watcher.changed()
    swap_data(tmp_path, "..v2", "a: 2\n")
    assert watcher.changed()
    assert not watcher.changed()
    swap_data(tmp_path, "..v3", "a: 2\n")  # new target, same content
    assert not watcher.changed()
    (tmp_path / "..v3" / "config.yaml").write_text("a: 3\n")
    assert watcher.changed()


def test_run_calls_back_and_survives_errors(tmp_path: Path) -> None:
    """run() calls on_change for a change, logs a failing callback and keeps watching."""
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    calls: list[str] = []

    async def on_change() -> None:
        calls.append(path.read_text())
        if len(calls) == 1:
            raise RuntimeError("first reload fails")

    async def scenario() -> None:
        watcher = ConfigWatcher(path, 0.01, on_change)
        task = asyncio.create_task(watcher.run())
        path.write_text("a: 2\n")
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        path.write_text("a: 33\n")
        watcher.poke()
        for _ in range(200):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert calls == ["a: 2\n", "a: 33\n"]
