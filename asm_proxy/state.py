"""What every new stream or Check starts from: the running settings and chain."""

from __future__ import annotations

import asyncio

from asm_proxy.chain import Chain
from asm_proxy.config import ServerSettings


class ServerState:
    """What every new stream starts from; replaced as a whole on reload."""

    def __init__(self, settings: ServerSettings, chain: Chain) -> None:
        self.settings = settings
        self.chain = chain
        self._closing: set[asyncio.Task[None]] = set()

    def install(self, settings: ServerSettings, chain: Chain) -> None:
        old = self.chain
        self.settings, self.chain = settings, chain
        old.retire(lambda: self._close_later(old))

    def _close_later(self, chain: Chain) -> None:
        task = asyncio.get_running_loop().create_task(chain.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
