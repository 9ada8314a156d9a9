"""One worker process: a `Server` driven by the supervisor over a socketpair.

Started by the supervisor as `python -c "from asm_proxy.worker import main; main()"
--index I --control-fd FD --listen ADDRESS [--reuse-port] [--transport NAME]
[--listen-fd FD]` (a listening socket the supervisor owns, asm_proxy/listeners.py). The first
message brings the config text (the supervisor's last good one, so a restart never reads a
file that has gone bad since); then, one JSON object a line:

    {"op": "reload", "config": TEXT, "id": n} -> {"id": n, "ok": bool}
    {"op": "stats", "id": n}                  -> {"id": n, "index", "pid", "address",
                                                  "in_flight", "counters"}
    {"op": "drain", "delay": s, "grace": s}      NOT_SERVING, then stop (see Server.drain)
    {"op": "stop"}                               stop now

If the supervisor goes away (its end of the socket closes), the worker stops too, so no
orphan keeps the port. SIGTERM sent to a worker directly drains it like the supervisor's
"drain"; SIGINT is ignored (a terminal's Ctrl-C is the supervisor's to handle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from asm_proxy.config import ConfigError
from asm_proxy.loader import load_text
from asm_proxy.server import Server
from asm_proxy.stats import counters

log = logging.getLogger("asm_proxy.worker")


class Worker:
    def __init__(
        self,
        index: int,
        listen: str,
        reuse_port: bool,
        transport: str | None = None,
        listen_fd: int | None = None,
    ) -> None:
        self.index = index
        self.listen = listen
        self.reuse_port = reuse_port
        self.transport = transport
        #: A listening socket the supervisor made for `listen` (it outlives this worker).
        self.listen_fd = listen_fd
        self.server: Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._drain: asyncio.Task[None] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(json.dumps(message).encode() + b"\n")

    async def run(self, control_fd: int) -> int:
        sock = socket.socket(fileno=control_fd)
        reader, self._writer = await asyncio.open_connection(sock=sock)
        first = await reader.readline()
        if not first:
            return 1
        start = json.loads(first)
        try:
            loaded = load_text(start["path"], start["config"])
            logging.getLogger().setLevel(loaded.settings.log_level.upper())
            server = Server(
                loaded,
                config_path=start["path"],
                reuse_port=self.reuse_port,
                watch=False,
                quiet=True,
                transport=self.transport,
            )
            listening = None
            if self.listen_fd is not None:
                listening = socket.socket(fileno=self.listen_fd)
            await server.start(self.listen, sock=listening)
        except ConfigError as exc:
            self._send({"op": "failed", "error": "; ".join(str(p) for p in exc.problems)})
            return 1
        except Exception as exc:
            self._send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
            return 1
        self.server = server
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(
            signal.SIGTERM,
            lambda: self.drain(server.settings.drain_delay, server.settings.drain_timeout),
        )
        # Everything made so far (modules, the config, plugins) lives as long as the process:
        # keep the cyclic GC from walking it again at every full collection. Measured under
        # load: GC time per request -45 %, longest pause 45 ms -> 7 ms (docs/PERFORMANCE.md).
        gc.freeze()
        self._send({"op": "ready", "pid": os.getpid(), "address": server.address})
        log.debug("worker %d serving on %s", self.index, server.address)
        control = loop.create_task(self._control(reader))
        try:
            await server.wait()  # returns once the server has stopped
        finally:
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control
            if self._drain is not None:
                await self._drain
        return 0

    async def _control(self, reader: asyncio.StreamReader) -> None:
        server = self.server
        assert server is not None
        while True:
            line = await reader.readline()
            if not line:
                # The supervisor is gone: nobody would restart, reload or stop us.
                log.warning("worker %d: supervisor gone; stopping", self.index)
                self.drain(0.0, min(server.settings.drain_timeout, 5.0))
                return
            message = json.loads(line)
            op = message.get("op")
            if op == "reload":
                ok = await server.reload(message["config"])
                self._send({"id": message["id"], "ok": ok})
            elif op == "stats":
                self._send(
                    {
                        "id": message["id"],
                        "index": self.index,
                        "pid": os.getpid(),
                        "address": server.address,
                        "in_flight": server.chain.in_flight,
                        "counters": counters.snapshot(),
                    }
                )
            elif op == "drain":
                self.drain(float(message["delay"]), float(message["grace"]))
            elif op == "stop":
                log.warning(
                    "worker %d: stopping now; %d stream(s) cut", self.index, server.chain.in_flight
                )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.stop(0), 1.0)
                os._exit(0)
            else:
                log.error("worker %d: unknown control message %r", self.index, op)

    def drain(self, delay: float, grace: float) -> None:
        if self._drain is None and self.server is not None:
            self._drain = asyncio.get_running_loop().create_task(self.server.drain(delay, grace))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asm-proxy worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--transport")
    parser.add_argument("--listen-fd", type=int)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(args.index, args.listen, args.reuse_port, args.transport, args.listen_fd)
    raise SystemExit(run_loop(worker.run(args.control_fd)))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop, or on asyncio's own loop if uvloop is missing or
    ASM_PROXY_LOOP=asyncio. uvloop takes about a fifth off a worker's CPU per request
    (docs/PERFORMANCE.md): grpc.aio wakes the loop several times per message."""
    if os.environ.get("ASM_PROXY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
