"""Run asm-proxy's server and echo upstreams on background event loops, for sync tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from asm_proxy.loader import load
from asm_proxy.metrics import Registry
from asm_proxy.server import Server
from asm_proxy.upstream import EchoUpstream

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop on a daemon thread; `call(coro)` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class ServerThread:
    """asm-proxy's Server on its own loop, started from a config file."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        listen: str = "127.0.0.1:0",
        watch: bool = False,
        transport: str | None = None,
    ):
        self.config_path = Path(config_path)
        self._bg = BackgroundLoop("asm-proxy-server")
        loaded = load(self.config_path)
        #: This server's plugin and hook metrics, apart from other tests' servers.
        self.metrics = Registry()
        self.server = Server(
            loaded,
            config_path=self.config_path if watch else None,
            transport=transport,
            registry=self.metrics,
        )
        self._bg.call(self.server.start(listen))

    @property
    def address(self) -> str:
        return self.server.address

    def reload(self) -> bool:
        self.server.config_path = self.config_path
        return self._bg.call(self.server.reload())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._bg.call(coro)

    def stop(self) -> None:
        try:
            self._bg.call(self.server.stop(grace=1))
        finally:
            self._bg.close()


class Upstreams:
    """Named echo upstreams sharing one background loop."""

    def __init__(self, *names: str) -> None:
        self._bg = BackgroundLoop("upstreams")
        self.by_name: dict[str, EchoUpstream] = {}
        for name in names:
            upstream = EchoUpstream(name)
            self._bg.call(upstream.start())
            self.by_name[name] = upstream

    def __getitem__(self, name: str) -> EchoUpstream:
        return self.by_name[name]

    @property
    def ports(self) -> dict[str, int]:
        return {name: u.port for name, u in self.by_name.items()}

    def stop(self) -> None:
        for upstream in self.by_name.values():
            self._bg.call(upstream.stop())
        self._bg.close()
