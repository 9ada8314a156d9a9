"""What the drills run: `asm-proxy serve` as its own process (so it can be killed like a real
one), Envoy in front of it with the project's own bootstrap, and an upstream Envoy that
answers every request itself (C++, its own process: it takes no CPU the drill measures).

Everything listens on 127.0.0.1 or on Unix sockets in the drill's directory; readiness is
polled, never slept for.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from perf.envoys import start_upstream
from tests.support import waiting

ROOT = Path(__file__).resolve().parents[2]
#: The transport every `Serve` uses unless told (`--transport` of `python -m tests.reliability`);
#: None: the config's default, `auto` (nghttp2 where built).
TRANSPORT: str | None = None
_SERVING = re.compile(
    r"asm-proxy serving on (\S+(?:, \S+)*) with \d+ worker\(s\) \(pids ([\d,]+)\)"
)


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Polled every 10 ms: the orphan drill times what follows from the moment this returns."""
    waiting.wait_for(predicate, what, limit, interval=0.01)


def without_file_capabilities() -> list[str]:
    """A command prefix that drops root's power to read any file (so a file's permissions
    apply, as for a non-root server); empty when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run asm-proxy without root's file access"
    drop = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", drop, "--inh-caps", drop]


class Serve:
    """`asm-proxy serve` as its own process group leader's child, its log in a file."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        listen: str,
        workers: int,
        name: str = "serve",
        prefix: list[str] | None = None,
        transport: str | None = None,
    ) -> None:
        """`transport`: asm-proxy's (`serve --transport`), default TRANSPORT."""
        workdir.mkdir(parents=True, exist_ok=True)
        transport = transport or TRANSPORT
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.listen = listen
        self.proc = subprocess.Popen(
            [
                *(prefix or []),
                sys.executable,
                "-m",
                "asm_proxy",
                "serve",
                "--config",
                str(self.config),
                "--listen",
                listen,
                "--workers",
                str(workers),
                *(["--transport", transport] if transport else []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=workdir,
        )
        match = self.wait_log(_SERVING)
        self.addresses = match.group(1).split(", ")
        self.first_pids = [int(p) for p in match.group(2).split(",")]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(
        self, pattern: str | re.Pattern[str], count: int = 1, limit: float = 60
    ) -> re.Match[str]:
        """The first match of `pattern` once the log has `count` of them."""
        regex = re.compile(pattern)

        def found() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"asm-proxy exited with {self.proc.returncode}:\n{self.log}")
            return len(regex.findall(self.log)) >= count

        wait_for(found, f"{regex.pattern!r} x{count} in the log", limit)
        match = regex.search(self.log)
        assert match is not None
        return match

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)  # a second one: stop now
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Front:
    """An upstream and an Envoy whose asm_proxy cluster lists `targets`."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        setup: Mapping[str, Any] | None = None,
        *,
        name: str = "front",
    ) -> None:
        """`setup`: fields of the bootstrap's Setup (ext_proc, asm_proxy_health_checks, ...)."""
        setup = dict(setup or {})
        self.upstream = start_upstream(workdir / f"{name}-upstream")
        ext_proc = setup.pop("ext_proc", None) or ExtProc(message_timeout="1s")
        config = bootstrap(
            Setup(
                asm_proxy=targets,
                clusters={"upstream": self.upstream.port},
                routes=[Route("upstream")],
                ext_proc=ext_proc,
                **setup,
            )
        )
        try:
            self.envoy = EnvoyProcess(config, workdir, name=name).start()
        except BaseException:
            self.upstream.stop()
            raise

    @property
    def url(self) -> str:
        return self.envoy.url

    def healthy(self) -> dict[str, bool]:
        """The asm_proxy cluster's endpoints and whether Envoy would send to them."""
        out: dict[str, bool] = {}
        for line in self.envoy.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) >= 4 and parts[0] == "asm_proxy" and parts[2] == "health_flags":
                out[parts[1]] = parts[3] == "healthy"
        return out

    def streams_by_endpoint(self) -> dict[str, int]:
        """Streams Envoy has sent each endpoint of the asm_proxy cluster (its rq_total), by
        address as asm-proxy names it (`HOST:PORT`, `unix:PATH`)."""
        out: dict[str, int] = {}
        for line in self.envoy.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) >= 4 and parts[0] == "asm_proxy" and parts[2] == "rq_total":
                where = parts[1] if parts[1][:1].isdigit() else f"unix:{parts[1]}"
                out[where] = int(parts[3])
        return out

    def close(self) -> None:
        self.envoy.stop()
        self.upstream.stop()
