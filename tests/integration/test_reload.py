"""Hot reload while requests flow: a good file, a bad file, a ConfigMap symlink swap."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from tests.integration.conftest import StackFactory
from tests.support.background import Upstreams
from tests.support.plugins import SlowTag

ROOT = Path(__file__).resolve().parents[2]


def versioned(version: str, delay_ms: int = 0, interval: str = "100ms") -> str:
    return f"""
reloadInterval: {interval}
deadline: 2s
plugins:
  - name: version
    type: 'tests.support.plugins:SlowTag'
    config: {{value: {version}, delayMs: {delay_ms}}}
"""


class ConfigMapDir:
    """A directory laid out like a mounted ConfigMap; `publish` swaps ..data atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    @property
    def path(self) -> Path:
        return self.root / "config.yaml"

    def publish(self, text: str) -> None:
        self.n += 1
        version_dir = self.root / f"..2026_11_22_{self.n:02d}"
        version_dir.mkdir()
        (version_dir / "config.yaml").write_text(text)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(version_dir.name)
        os.replace(tmp_link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/config.yaml")


class Traffic:
    """Requests in a loop on a thread, bounded in count and time; tallies what came back."""

    def __init__(self, url: str, limit: int = 5000, seconds: float = 30) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._limit, self._seconds = limit, seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        give_up = time.monotonic() + self._seconds
        with httpx.Client(base_url=self.url, timeout=5) as client:
            for _ in range(self._limit):
                if self._stop.is_set() or time.monotonic() > give_up:
                    return
                resp = client.get("/")
                self.statuses[resp.status_code] += 1
                if resp.status_code == 200:
                    self.versions.append(resp.json()["headers"].get("x-version", "none"))

    def wait_for(self, version: str, timeout: float = 10) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.02)
        raise AssertionError(f"never saw {version}; last: {self.versions[-5:]}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def serve(tmp_path: Path, upstreams: Upstreams, transport: str):
    """`asm-proxy serve` as its own process, with Envoy in front; yields (envoy, logs)."""
    procs: list[subprocess.Popen[str]] = []
    envoys: list[EnvoyProcess] = []
    logs: list = []
    log_path = tmp_path / "asm-proxy.log"

    def start(config: Path) -> tuple[EnvoyProcess, Path]:
        # Text logs: the assertions below read messages as a person would.
        env = dict(os.environ, PYTHONPATH=str(ROOT), ASM_PROXY_LOG_FORMAT="text")
        log = open(log_path, "w")  # noqa: SIM115
        logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asm_proxy",
                "serve",
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
                "--transport",
                transport,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        procs.append(proc)
        give_up = time.monotonic() + 20
        address = None
        while address is None and time.monotonic() < give_up:
            assert proc.poll() is None, log_path.read_text()
            m = re.search(r"serving on (127\.0\.0\.1:\d+)", log_path.read_text())
            address = m.group(1) if m else None
            time.sleep(0.05)
        assert address, log_path.read_text()
        setup = Setup(
            asm_proxy=address, clusters=upstreams.ports, routes=[Route("a")], ext_proc=ExtProc()
        )
        envoy = EnvoyProcess(bootstrap(setup), tmp_path, name="reload-envoy").start()
        envoys.append(envoy)
        return envoy, log_path

    yield start
    for envoy in envoys:
        envoy.stop()
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    for log in logs:
        log.close()


def test_reload_while_requests_flow(tmp_path: Path, serve) -> None:
    """Good files take effect without a failed request; a bad file is refused with the same
    messages as `validate` and the running chain stays; a ConfigMap swap is noticed."""
    cm = ConfigMapDir(tmp_path / "cm")
    cm.root.mkdir()
    cm.publish(versioned("v1"))
    envoy, log = serve(cm.path)
    traffic = Traffic(envoy.url)
    try:
        traffic.wait_for("v1")
        cm.publish(versioned("v2"))  # ConfigMap-style symlink swap
        traffic.wait_for("v2")
        cm.publish("plugins: [{name: broken, type: no-such-type}]\n")
        give_up = time.monotonic() + 10
        while "refused" not in log.read_text() and time.monotonic() < give_up:
            time.sleep(0.05)
        n = len(traffic.versions)
        time.sleep(0.3)
        assert set(traffic.versions[n:]) == {"v2"}  # the running chain stayed
        (cm.root / "..data" / "config.yaml").resolve().write_text(versioned("v3"))  # in place
        traffic.wait_for("v3")
    finally:
        traffic.stop()
    assert set(traffic.statuses) == {200}, traffic.statuses
    give_up = time.monotonic() + 5  # the supervisor logs once every worker has switched
    while log.read_text().count("reloaded") < 2 and time.monotonic() < give_up:
        time.sleep(0.05)
    text = log.read_text()
    assert "field 'type': unknown plugin type 'no-such-type'" in text
    assert 'plugin plugins[0] "broken"' in text
    assert text.count("reloaded") == 2


def test_streams_in_flight_finish_on_their_chain(stack: StackFactory, tmp_path: Path) -> None:
    """A request already inside the chain when the reload lands finishes with the old
    chain; the next one gets the new chain; the old chain is closed once idle."""
    s = stack(versioned("old", delay_ms=400, interval="0s"), ext_proc=ExtProc(message_timeout="3s"))
    SlowTag.closed.clear()
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.setdefault("r", s.get("/")))
    slow.start()
    give_up = time.monotonic() + 5
    while s.server.server.chain.in_flight == 0 and time.monotonic() < give_up:
        time.sleep(0.01)
    s.server.config_path.write_text(versioned("new", interval="0s"))
    assert s.server.reload()
    assert SlowTag.closed == []  # still in use by the slow request
    assert s.get("/").json()["headers"]["x-version"] == "new"
    slow.join(10)
    assert result["r"].json()["headers"]["x-version"] == "old"
    give_up = time.monotonic() + 5
    while not SlowTag.closed and time.monotonic() < give_up:
        time.sleep(0.01)
    assert SlowTag.closed == ["old"]


def test_bad_reload_in_process_keeps_chain(stack: StackFactory) -> None:
    """reload() of a broken file returns False and changes nothing."""
    s = stack(versioned("v1", interval="0s"))
    before = s.server.server.chain
    s.server.config_path.write_text("plugins: [{name: x, type: headers, config: {nope: 1}}]")
    assert s.server.reload() is False
    assert s.server.server.chain is before
    assert s.get("/").json()["headers"]["x-version"] == "v1"


def test_a_reload_says_which_settings_wait_for_a_restart(
    stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The transport's limits and the socket are read when the server starts to listen:
    a reload that changes them is applied for the rest and warns, naming each field as
    the file spells it; one that does not change them says nothing of it."""
    caplog.set_level(logging.WARNING, logger="asm_proxy.server")
    s = stack(versioned("v1", interval="0s"))
    path = s.server.config_path
    path.write_text(
        "maxMessageBytes: 1048576\nmaxConcurrentStreams: 10\n" + versioned("v2", interval="0s")
    )
    assert s.server.reload() is True
    assert s.get("/").json()["headers"]["x-version"] == "v2"
    warned = [r.getMessage() for r in caplog.records if "takes effect on restart" in r.getMessage()]
    assert warned == [
        "maxMessageBytes changed to 1048576; it takes effect on restart",
        "maxConcurrentStreams changed to 10; it takes effect on restart",
    ]
    caplog.clear()
    path.write_text(versioned("v3", interval="0s"))  # back to what it started with
    assert s.server.reload() is True
    assert not [r for r in caplog.records if "takes effect on restart" in r.getMessage()]
