"""A worker never outlives its supervisor: killed (SIGKILL) at points all through a worker's
restart (before the new worker exists, while it imports, loads, binds, serves), no worker
process is left after a second, and nothing keeps listening on the socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.drills import supervisor_killed_during_restart

pytestmark = pytest.mark.envoy

#: The restart begins 0.25 s after the worker died (backoff) and serves ~0.5 s after it.
DELAYS = [0.1, 0.3, 0.4, 0.5, 0.6, 0.8]


def test_no_worker_outlives_its_supervisor(tmp_path: Path) -> None:
    result = supervisor_killed_during_restart(tmp_path, DELAYS)
    assert [r.delay for r in result.runs] == DELAYS
    # Timing on a shared machine is noisy: the requirement is 1 s, the assertion allows 2.
    for run in result.runs:
        assert run.stopped_after is not None and run.stopped_after < 2.0, run
        assert not run.still_listening, run
    assert any(r.restarted for r in result.runs), result.runs  # a serving orphan was tried
    assert any(r.workers_seen for r in result.runs), result.runs
