"""Config-file faults under load through real Envoy, with an API-key `auth` plugin: a request
without a key must be refused (401) throughout, and one with the key served (200).

The file is rewritten in place (truncated, then written in pieces), written slowly in two
halves of which the first is a valid config *without* the auth plugin, emptied, deleted,
replaced by a directory and made unreadable. None of it may drop auth for a single request;
each unusable state is said once; good files still take effect.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.reload_drill import config, reload_faults
from tests.reliability.stack import wait_for
from tests.support.background import ServerThread

pytestmark = pytest.mark.envoy


def test_auth_is_never_dropped(tmp_path: Path) -> None:
    result = reload_faults(tmp_path, rounds=1)
    assert result.without_key_failed == 0, result.without_key
    assert result.with_key_failed == 0, result.with_key
    assert result.faults == {
        "in-place rewrite": 1,
        "slow write, first half without auth": 3,
        "emptied": 1,
        "deleted": 1,
        "directory": 1,
        "unreadable": 1,
    }
    assert result.reloads == 6
    counts = result.log_counts
    assert counts["reloaded"] == result.reloads, result  # every good file, both workers
    assert counts["said again"] == 0, result  # each state said once
    assert counts["usable again"] == 3, result
    assert counts["the file is empty"] == 1, result  # refused once, not at every poll
    assert counts["no plugins"] == 0, result
    assert set(result.states) >= {
        "cannot be used (cannot read: No such file or directory)",
        "cannot be used (not a regular file (a directory))",
        "cannot be used (cannot read: Permission denied)",
        "is usable again",
    }, result


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
