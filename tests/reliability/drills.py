"""The fault drills, each a function the test suite runs short and `python -m
tests.reliability` runs long: what was done, what it cost, measured from outside."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from asm_proxy.server import unix_socket_in_use
from tests.reliability import procs
from tests.reliability.load import Load
from tests.reliability.stack import Front, Serve

PASS_THROUGH = """
reloadInterval: 0s
deadline: 500ms
plugins:
  - name: tag
    type: headers
    config: {request: {set: {x-drill: "1"}}}
"""


# -- the supervisor killed while it restarts a worker ----------------------------------


@dataclass
class OrphanRun:
    delay: float  # supervisor SIGKILLed this long after the worker was
    restarted: bool  # the replacement was already serving when the supervisor died
    workers_seen: int  # worker processes alive after the supervisor's death
    stopped_after: float | None  # seconds until none was left (None: still there at the limit)
    still_listening: bool  # something still accepted on the socket afterwards


@dataclass
class OrphanResult:
    runs: list[OrphanRun] = field(default_factory=list)
    load: str = ""

    @property
    def max_stop(self) -> float | None:
        times = [r.stopped_after for r in self.runs]
        return None if None in times else max(t for t in times if t is not None)


def supervisor_killed_during_restart(
    workdir: Path, delays: list[float], *, limit: float = 5.0
) -> OrphanResult:
    """For each delay: serve with one worker behind Envoy under load, SIGKILL the worker
    (the supervisor starts a new one), SIGKILL the supervisor `delay` seconds later, then
    time how long any worker process of it stays alive."""
    path = workdir / "orphan.sock"
    listen = f"unix:{path}"
    result = OrphanResult()
    front = Front(workdir, [listen])
    load = Load(front.url, rate=100, connections=4, seconds=len(delays) * 10 + 30).start()
    try:
        for i, delay in enumerate(delays):
            serve = Serve(workdir / f"run-{i}", PASS_THROUGH, listen=listen, workers=1)
            try:
                (worker,) = serve.first_pids
                os.kill(worker, signal.SIGKILL)
                time.sleep(delay)
                restarted = "restarted as pid" in serve.log
                serve.proc.kill()
                died = time.monotonic()
                seen: set[int] = set()
                last = died
                while time.monotonic() - died < limit:
                    alive = procs.workers(listen)
                    if alive:
                        seen.update(alive)
                        last = time.monotonic()
                    elif time.monotonic() - last > 0.3:
                        break  # nothing for a while (a fork about to exec shows up in time)
                    time.sleep(0.002)
                stopped = None if procs.workers(listen) else (last - died if seen else 0.0)
                serve.proc.wait(10)
                result.runs.append(
                    OrphanRun(
                        delay,
                        restarted,
                        len(seen),
                        stopped,
                        path.exists() and unix_socket_in_use(path),
                    )
                )
            finally:
                for pid in procs.workers(listen):
                    os.kill(pid, signal.SIGKILL)
                serve.close()
    finally:
        result.load = load.stop().summary()
        front.close()
    return result
