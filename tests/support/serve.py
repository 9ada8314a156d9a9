"""`asm-proxy serve` as its own process (supervisor and workers, as deployed), its JSON log
read line by line, and its admin endpoint queried over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    give_up = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


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
