"""What every new stream or Check starts from: the running settings and chain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asm_proxy.chain import Chain
from asm_proxy.config import ServerSettings


class ServerState:
    """What every new stream starts from; replaced as a whole on reload."""

    def __init__(self, settings: ServerSettings, chain: Chain) -> None:
        self.settings = settings
        self.chain = chain
        self._closing: set[asyncio.Task[None]] = set()
        #: Called with each replaced chain once its last stream has ended and it is closed.
        self.on_retired: Callable[[Chain], None] | None = None

    def install(self, settings: ServerSettings, chain: Chain) -> None:
        old = self.chain
        self.settings, self.chain = settings, chain
        old.retire(lambda: self._close_later(old))

    def _close_later(self, chain: Chain) -> None:
        task = asyncio.get_running_loop().create_task(self._close(chain))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, chain: Chain) -> None:
        await chain.close()
        if self.on_retired is not None:
            self.on_retired(chain)
