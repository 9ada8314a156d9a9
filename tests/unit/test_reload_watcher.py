"""The config watcher notices edits and ConfigMap symlink swaps, only real changes, only whole
files (a file still being written is waited for), and says once when the file cannot be
used."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asm_proxy.reload import SETTLE_TRIES, ConfigWatcher
from asm_proxy.stats import counters


def swap_data(root: Path, name: str, text: str) -> None:
    (root / name).mkdir()
    (root / name / "config.yaml").write_text(text)
    (root / "..tmp").symlink_to(name)
    os.replace(root / "..tmp", root / "..data")


async def noop(data: bytes) -> None:
    return None


def test_configmap_swap_and_edits(tmp_path: Path) -> None:
    """A ..data swap and an in-place edit are changes; a touch with the same content is not."""
    swap_data(tmp_path, "..v1", "a: 1\n")
    path = tmp_path / "config.yaml"
    path.symlink_to("..data/config.yaml")

    async def scenario() -> None:
        watcher = ConfigWatcher(path, 1.0, noop, settle=0.01)
        assert await watcher.changed() is None  # the content it started with
        swap_data(tmp_path, "..v2", "a: 2\n")
        assert await watcher.changed() == b"a: 2\n"
        assert await watcher.changed() is None
        swap_data(tmp_path, "..v3", "a: 2\n")  # new target, same content
        assert await watcher.changed() is None
        (tmp_path / "..v3" / "config.yaml").write_text("a: 3\n")
        assert await watcher.changed() == b"a: 3\n"

    asyncio.run(scenario())


def test_a_change_before_the_watcher_started_is_seen(tmp_path: Path) -> None:
    """`initial` is what is running: a file changed after it was loaded is a change."""
    path = tmp_path / "config.yaml"
    path.write_text("a: 2\n")

    async def scenario() -> bytes | None:
        return await ConfigWatcher(path, 1.0, noop, initial=b"a: 1\n", settle=0.01).changed()

    assert asyncio.run(scenario()) == b"a: 2\n"


def test_a_file_being_written_is_taken_only_whole(tmp_path: Path) -> None:
    """Truncated, then written in pieces with pauses shorter than the settle time: the
    watcher hands over the finished file, never the empty or half-written one."""
    path = tmp_path / "config.yaml"
    path.write_text("plugins: [{name: a, type: headers}]\n")
    final = b"plugins:\n  - {name: a, type: headers}\n  - {name: auth, type: auth}\n"

    async def scenario() -> bytes | None:
        watcher = ConfigWatcher(path, 1.0, noop, settle=0.15)
        with open(path, "wb") as file:  # noqa: ASYNC230 - truncated now, written below
            looked = asyncio.create_task(watcher.changed())
            for i in range(0, len(final), 16):
                await asyncio.sleep(0.04)
                file.write(final[i : i + 16])
                file.flush()
        return await looked

    assert asyncio.run(scenario()) == final


def test_a_file_that_keeps_changing_is_left_for_the_next_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file still changing after every settle check is not taken (counted, warned); the
    next poll takes it once it has stopped."""
    path = tmp_path / "config.yaml"
    path.write_text("a: 0\n")
    before = counters.config_file_unsettled

    async def scenario() -> tuple[bytes | None, bytes | None]:
        watcher = ConfigWatcher(path, 1.0, noop, settle=0.02)
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                path.write_text(f"a: {n}\n")
                await asyncio.sleep(0.005)
            path.write_text("a: done\n")

        task = asyncio.create_task(writer())
        first = await watcher.changed()
        stop.set()
        await task
        return first, await watcher.changed()

    with caplog.at_level(logging.WARNING, "asm_proxy.reload"):
        first, second = asyncio.run(scenario())
    assert first is None
    assert second == b"a: done\n"
    assert counters.config_file_unsettled == before + 1
    assert f"is still changing after {0.02 * SETTLE_TRIES:.1f}s" in caplog.text


def test_unusable_file_is_said_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleted, then a directory, then a FIFO, then back with the same content: nothing is
    handed over; one WARNING per state (each reason named), one when usable again; the
    gauge is 1 meanwhile."""
    path = tmp_path / "config.yaml"
    path.write_text("plugins: []\n")
    events = counters.config_file_unusable_events

    async def scenario() -> list[bytes | None]:
        watcher = ConfigWatcher(path, 1.0, noop, settle=0.01)
        seen = [await watcher.changed()]
        path.unlink()
        seen += [await watcher.changed(), await watcher.changed()]
        assert counters.config_file_unusable == 1
        assert watcher.unusable == "cannot read: No such file or directory"
        path.mkdir()
        seen += [await watcher.changed(), await watcher.changed()]
        path.rmdir()
        os.mkfifo(path)
        seen.append(await watcher.changed())
        path.unlink()
        path.write_text("plugins: []\n")
        seen += [await watcher.changed(), await watcher.changed()]
        assert counters.config_file_unusable == 0
        return seen

    with caplog.at_level(logging.WARNING, "asm_proxy.reload"):
        assert asyncio.run(scenario()) == [None] * 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"config {path} cannot be used (cannot read: No such file or directory); "
        "the running chain stays",
        f"config {path} cannot be used (not a regular file (a directory)); the running chain stays",
        f"config {path} cannot be used (not a regular file (a FIFO)); the running chain stays",
        f"config {path} is usable again",
    ]
    assert counters.config_file_unusable_events == events + 3


CHECK_UNREADABLE = """
import asyncio, sys
from asm_proxy.reload import ConfigWatcher
async def main():
    async def noop(data): pass
    watcher = ConfigWatcher(sys.argv[1], 1.0, noop, initial=b"plugins: []\\n", settle=0.01)
    print(await watcher.changed(), watcher.unusable)
asyncio.run(main())
"""


def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is unusable, with the reason (as root, the check
    runs without the capabilities that bypass file permissions)."""
    path = tmp_path / "config.yaml"
    path.write_text("plugins: []\n")
    path.chmod(0)
    command = [sys.executable, "-c", CHECK_UNREADABLE, str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's file capabilities"
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, "--bounding-set", drop, "--inh-caps", drop, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout == "None cannot read: Permission denied\n", done.stderr


def test_run_calls_back_and_survives_errors(tmp_path: Path) -> None:
    """run() calls on_change with the new bytes, logs a failing callback and keeps
    watching."""
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    calls: list[bytes] = []

    async def on_change(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("first reload fails")

    async def scenario() -> None:
        watcher = ConfigWatcher(path, 0.01, on_change, settle=0.01)
        task = asyncio.create_task(watcher.run())
        path.write_text("a: 2\n")
        for _ in range(300):
            if calls:
                break
            await asyncio.sleep(0.01)
        path.write_text("a: 33\n")
        watcher.poke()
        for _ in range(300):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert calls == [b"a: 2\n", b"a: 33\n"]
