"""The supervisor with real worker processes on a background loop, and a plugin that tells
which worker served a request."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from asm_proxy.api import Http, Plugin, PluginConfig, offload
from asm_proxy.supervisor import Supervisor
from tests.support.background import BackgroundLoop


class PidTagConfig(PluginConfig):
    version: str = "v1"
    slow_prefix: str = "/slow"
    delay_ms: int = 0


class PidTag(Plugin):
    """Sets x-worker-pid and x-version; requests under `slow_prefix` wait `delay_ms` first."""

    Config = PidTagConfig

    async def on_request_headers(self, http: Http) -> None:
        if self.config.delay_ms and http.request.path.startswith(self.config.slow_prefix):
            self.log.warning("slow request started in pid %d", os.getpid())
            await asyncio.sleep(self.config.delay_ms / 1000)
        http.request.headers.set("x-worker-pid", str(os.getpid()))
        http.request.headers.set("x-version", self.config.version)


def swap_case(data: memoryview) -> bytes:
    """The offloaded work of `SwapCase` (module level: the pool process imports it)."""
    return bytes(data).swapcase()


class SwapCase(Plugin):
    """Sends the request body through the offload pool and forwards what comes back, with
    the pid that did the work."""

    async def on_request_body(self, http: Http) -> None:
        body = http.request.body
        body.replace(await offload(swap_case, body))
        http.request.headers.set("x-worker-pid", str(os.getpid()))


def pid_tag_config(version: str = "v1", delay_ms: int = 0, extra: str = "") -> str:
    return f"""
reloadInterval: 0s
deadline: 20s
{extra}
plugins:
  - name: pid
    type: 'tests.support.workers:PidTag'
    config: {{version: {version}, delayMs: {delay_ms}}}
"""


class SupervisorThread:
    """A Supervisor (and so its worker processes) driven from sync tests."""

    def __init__(
        self, config_path: Path, *, listen: str, workers: int, transport: str | None = None
    ) -> None:
        self._bg = BackgroundLoop("asm-proxy-supervisor")
        self.supervisor = Supervisor(
            config_path, listen=listen, workers=workers, transport=transport
        )
        self.config_path = config_path
        try:
            self._bg.call(self.supervisor.start(), timeout=60)
        except BaseException:
            self._bg.close()
            raise
        self._stopped = False

    @property
    def addresses(self) -> list[str]:
        return self.supervisor.addresses

    def stats(self) -> list[dict[str, Any]]:
        return sorted(self._bg.call(self.supervisor.stats()), key=lambda s: s["index"])

    def streams_by_worker(self) -> dict[int, int]:
        return {s["index"]: s["counters"]["streams_started"] for s in self.stats()}

    def reload(self) -> bool:
        return self._bg.call(self.supervisor.reload())

    def shutdown(self, delay: float, grace: float) -> None:
        self._stopped = True
        self._bg.call(self.supervisor.shutdown(delay, grace), timeout=delay + grace + 30)

    def stop(self) -> None:
        try:
            if not self._stopped:
                self.shutdown(0, 1)
        finally:
            self._bg.close()
