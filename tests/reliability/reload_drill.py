"""The config-file drill: the file is rewritten every bad way an operator or a tool manages,
under load through Envoy, with an API-key `auth` plugin that must never be dropped."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.load import Load
from tests.reliability.stack import Front, Serve, without_file_capabilities

KEY = "drill-key-5f1e9a"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
#: The watcher polls this often, so it would see every intermediate state of a slow write.
INTERVAL = "50ms"


def tag_plugin(version: str) -> str:
    return f"""reloadInterval: {INTERVAL}
deadline: 500ms
plugins:
  - name: tag
    type: headers
    config: {{response: {{set: {{x-version: {version}}}}}}}
"""


def config(version: str) -> str:
    """A tag plugin first, then auth: cut after the first plugin, it is still a valid file."""
    return (
        tag_plugin(version)
        + f"""  - name: auth
    type: auth
    phase: AUTHN
    config:
      realm: drill
      apiKeys:
        keys: [{{consumer: drill, sha256: {DIGEST}}}]
"""
    )


def write_slowly(path: Path, pieces: list[str], pause: float) -> None:
    """Truncate `path` in place, then write `pieces` with `pause` between them."""
    with open(path, "w") as file:
        for piece in pieces:
            time.sleep(pause)
            file.write(piece)
            file.flush()


def replace(path: Path, text: str) -> None:
    """Write a whole new file atomically (as a ConfigMap update or `mv` does)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class ReloadResult:
    faults: dict[str, int]  # what was done to the file, how many times
    reloads: int  # good files taken by every worker
    without_key: str  # the keyless load: every request must be 401
    without_key_failed: int
    with_key: str  # the load with the key: every request must be 200
    with_key_failed: int
    log_counts: dict[str, int]
    states: list[str]  # the file states the watcher reported


def reload_faults(workdir: Path, *, rounds: int = 1) -> ReloadResult:
    """`rounds` times: rewrite in place (truncate, 4 pieces), three slow writes whose first
    half is a valid config without auth, empty, delete, directory, unreadable; then a good
    change. Two workers on a Unix socket, asm-proxy without root's file access (so a file's
    permissions apply)."""
    serve = Serve(
        workdir,
        config("v0"),
        listen=f"unix:{workdir}/asm.sock",
        workers=2,
        prefix=without_file_capabilities(),
    )
    front = None
    faults = dict.fromkeys(
        ("in-place rewrite", "slow write, first half without auth", "emptied", "deleted",
         "directory", "unreadable"),
        0,
    )  # fmt: skip
    reloads = unusable = 0
    try:
        front = Front(workdir, serve.addresses)
        path = serve.config
        keyless = Load(front.url, rate=80, connections=4, seconds=rounds * 60, ok=(401,))
        keyed = Load(
            front.url, rate=40, connections=2, seconds=rounds * 60, headers=[("x-api-key", KEY)]
        )
        keyless.start()
        keyed.start()
        try:
            keyless.wait_for(20)
            keyed.wait_for(10)
            for n in range(rounds):
                version = 10 * n
                text = config(f"v{version + 1}")
                size = len(text) // 4 + 1
                write_slowly(path, [text[i : i + size] for i in range(0, len(text), size)], 0.05)
                faults["in-place rewrite"] += 1
                reloads += 1
                serve.wait_log("reloaded in 2 worker", count=reloads)
                for k in range(2, 5):
                    head = tag_plugin(f"v{version + k}")
                    write_slowly(path, [head, config(f"v{version + k}")[len(head) :]], 0.1)
                    faults["slow write, first half without auth"] += 1
                    reloads += 1
                    serve.wait_log("reloaded in 2 worker", count=reloads)
                path.write_text("")  # `: > file`, left so
                faults["emptied"] += 1
                serve.wait_log("the file is empty", count=n + 1)
                time.sleep(0.5)
                replace(path, config(f"v{version + 5}"))
                reloads += 1
                serve.wait_log("reloaded in 2 worker", count=reloads)
                for fault, reason in (
                    ("deleted", r"cannot read: No such file or directory"),
                    ("directory", r"not a regular file \(a directory\)"),
                    ("unreadable", r"cannot read: Permission denied"),
                ):
                    if fault == "deleted":
                        path.unlink()
                    elif fault == "directory":
                        path.unlink()
                        path.mkdir()
                    else:
                        path.chmod(0)
                    faults[fault] += 1
                    unusable += 1
                    serve.wait_log(rf"cannot be used \({reason}\)", count=n + 1)
                    time.sleep(0.3)
                    if fault == "directory":
                        path.rmdir()
                    if fault == "unreadable":
                        path.chmod(0o644)
                    else:
                        replace(path, config(f"v{version + 5}"))
                    serve.wait_log("is usable again", count=unusable)
                replace(path, config(f"v{version + 6}"))
                reloads += 1
                serve.wait_log("reloaded in 2 worker", count=reloads)
        finally:
            refused, allowed = keyless.stop(), keyed.stop()
        log = serve.log
        states = re.findall(
            r"config \S+ (cannot be used \(.*\)(?=; the running chain stays)|is usable again)",
            log,
        )
    finally:
        if front is not None:
            front.close()
        serve.close()
    return ReloadResult(
        faults,
        reloads,
        refused.summary(),
        len(refused.failed),
        allowed.summary(),
        len(allowed.failed),
        {
            "reloaded": log.count("reloaded in 2 worker"),
            "cannot be used": log.count("cannot be used"),
            "usable again": log.count("is usable again"),
            # The same state said twice in a row (must be 0: once per change). Between two
            # faults the file may be missing for a moment (a directory cannot replace a
            # file in one step), which is a change of its own.
            "said again": sum(a == b for a, b in itertools.pairwise(states)),
            "the file is empty": log.count("the file is empty"),
            "no plugins": log.count("no plugins"),
        },
        sorted(set(states)),
    )
