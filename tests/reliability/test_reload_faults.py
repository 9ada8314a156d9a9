"""Config-file faults under load through real Envoy, with an API-key `auth` plugin: a request
without a key must be refused (401) throughout, and one with the key served (200).

The file is rewritten in place (truncated, then written in pieces), written slowly in two
halves of which the first is a valid config *without* the auth plugin, emptied, deleted,
replaced by a directory and made unreadable. None of it may drop auth for a single request;
each unusable state is said once; good files still take effect.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.load import Load
from tests.reliability.stack import Front, Serve, wait_for, without_file_capabilities
from tests.support.background import ServerThread

pytestmark = pytest.mark.envoy

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


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Serve, Front]]:
    serve = Serve(
        tmp_path,
        config("v1"),
        listen=f"unix:{tmp_path}/asm.sock",
        workers=2,
        prefix=without_file_capabilities(),
    )
    try:
        front = Front(tmp_path, serve.addresses)
    except BaseException:
        serve.close()
        raise
    yield serve, front
    front.close()
    serve.close()


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


def test_auth_is_never_dropped(served: tuple[Serve, Front]) -> None:
    serve, front = served
    path = serve.config
    refused = Load(front.url, rate=80, connections=4, seconds=60, ok=(401,)).start()
    allowed = Load(
        front.url, rate=40, connections=2, seconds=60, headers=[("x-api-key", KEY)]
    ).start()
    try:
        refused.wait_for(20)
        allowed.wait_for(10)
        reloads = 0

        # In-place rewrite: truncated, then written in 4 pieces, pauses below the settle time.
        text = config("v2")
        write_slowly(
            path,
            [text[i : i + len(text) // 4 + 1] for i in range(0, len(text), len(text) // 4 + 1)],
            0.05,
        )
        reloads += 1
        serve.wait_log("reloaded in 2 worker", count=reloads)

        # Slow writes whose first half is a valid config without auth.
        for n in range(3, 6):
            write_slowly(
                path, [tag_plugin(f"v{n}"), config(f"v{n}")[len(tag_plugin(f"v{n}")) :]], 0.1
            )
            reloads += 1
            serve.wait_log("reloaded in 2 worker", count=reloads)

        # Emptied in place (`: > file`), left so: refused, once.
        path.write_text("")
        serve.wait_log("the file is empty")
        time.sleep(0.5)
        replace(path, config("v6"))
        reloads += 1
        serve.wait_log("reloaded in 2 worker", count=reloads)

        # Deleted, a directory, unreadable: said once each, and once usable again.
        path.unlink()
        serve.wait_log("cannot be used \\(cannot read: No such file or directory\\)")
        time.sleep(0.3)
        replace(path, config("v6"))
        serve.wait_log("is usable again")
        path.unlink()
        path.mkdir()
        serve.wait_log("cannot be used \\(not a regular file \\(a directory\\)\\)")
        time.sleep(0.3)
        path.rmdir()
        replace(path, config("v6"))
        serve.wait_log("is usable again", count=2)
        path.chmod(0)
        serve.wait_log("cannot be used \\(cannot read: Permission denied\\)")
        time.sleep(0.3)
        path.chmod(0o644)
        serve.wait_log("is usable again", count=3)

        # And a good change still takes effect.
        replace(path, config("v7"))
        reloads += 1
        serve.wait_log("reloaded in 2 worker", count=reloads)
    finally:
        without_key = refused.stop()
        with_key = allowed.stop()
    assert without_key.failed == [], without_key.summary()
    assert with_key.failed == [], with_key.summary()
    assert without_key.total > 200 and with_key.total > 100
    log = serve.log
    assert log.count("cannot be used") == 3, log
    assert log.count("is usable again") == 3, log
    assert log.count("the file is empty") == 1, log  # refused once, not at every poll
    assert "no plugins" not in log
    assert log.count("reloaded in 2 worker") == reloads


def test_a_lone_server_refuses_an_emptied_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Server watching its own file (the demo's) keeps its chain when the file is emptied."""
    path = tmp_path / "asm.yaml"
    path.write_text(config("v1"))
    server = ServerThread(path, watch=True)
    try:
        chain = server.server.chain
        path.write_text("\n# emptied\n")
        wait_for(lambda: "the file is empty" in caplog.text, "the refusal", 10)
        assert server.server.chain is chain
        assert {e.name for e in chain.entries} == {"tag", "auth"}
    finally:
        server.stop()
