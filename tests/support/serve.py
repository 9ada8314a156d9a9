"""`asm-proxy serve` as its own process (supervisor and workers, as deployed): ServeProcess
with its JSON log read line by line and its admin endpoint queried over HTTP; Replica, one
of several a central Service spreads over, in its own session (signalled as a group)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """`python -m asm_proxy serve --config FILE ARGS...`, logging JSON (the format a
    process without a terminal gets) into a file."""

    def __init__(
        self, workdir: Path, config: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "serve.yaml"
        self.config.write_text(config)
        self.log_path = workdir / "serve.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        environ = {k: v for k, v in os.environ.items() if k != "ASM_PROXY_LOG_FORMAT"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asm_proxy", "serve", "--config", str(self.config), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**environ, "PYTHONPATH": str(ROOT), **(env or {})},
            cwd=workdir,
        )

    # -- the log ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.log_path.read_text()

    def lines(self) -> list[dict[str, Any]]:
        """Every complete log line, parsed (a line that is not JSON fails the test)."""
        out = []
        for line in self.text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"a log line is not JSON: {line!r}") from None
        return out

    def wait_message(self, pattern: str, limit: float = 30.0) -> re.Match[str]:
        """The first log message matching `pattern` (waits for it)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            assert self.proc.poll() is None, f"serve exited:\n{self.text}"
            for line in self.lines():
                match = re.search(pattern, line["message"])
                if match:
                    found.append(match)
                    return True
            return False

        wait_for(seen, pattern, limit)
        return found[0]

    @property
    def address(self) -> str:
        return self.wait_message(r"serving on (\S+) with").group(1).rstrip(",")

    @property
    def admin(self) -> str:
        return self.wait_message(r"admin endpoint on (http://\S+)").group(1)

    # -- the admin endpoint ------------------------------------------------------------

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.admin + path, timeout=30, **kw)

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """/metrics parsed: {sample name: {sorted label pairs: value}}."""
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def total(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    """The sum of the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for key, value in samples.items() if wanted <= set(key))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a config that must name its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """`asm-proxy serve` as its own process, as a Deployment's pod runs it."""

    def __init__(self, config: Path, port: int, transport: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asm_proxy",
                "serve",
                "--config",
                str(config),
                "--transport",
                transport,
            ],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.log: list[str] = []
        self._serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._serving.wait(60):
            self.stop()
            raise AssertionError("replica did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "asm-proxy serving on" in line:
                self._serving.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
