"""One worker process: a `Server` driven by the supervisor over a socketpair.

Started by the supervisor (supervisor._WORKER_BOOT) with `--supervisor-pid P --index I
--control-fd FD --listen ADDRESS [--reuse-port] [--transport NAME] [--listen-fd FD]` (a
listening socket the supervisor owns, asm_proxy/listeners.py). The first message brings the
config text (the supervisor's last good one, so a restart never reads a file that has gone
bad since) and whether to take a Unix socket path over from a worker still serving on it (a
restart or a recycle; not needed on a socket the supervisor owns); then, one JSON object a
line:

    {"op": "reload", "config": TEXT, "id": n} -> {"id": n, "ok": bool}
    {"op": "stats", "id": n}                  -> {"id": n, "index", "pid", "address",
                                                  "in_flight", "rss", "counters", "config_hash"}
    {"op": "metrics", "id": n}                -> {"id": n, "families": [...]}
    {"op": "drain", "delay": s, "grace": s}      NOT_SERVING, then stop (see Server.drain)
    {"op": "retire", "grace": s}                 a replacement serves: stop taking streams,
                                                 finish those in flight, exit
    {"op": "stop"}                               stop now

A worker never outlives its supervisor: nothing would restart, reload or stop it, and it
would hold the port. Linux sends SUPERVISOR_GONE (SIGUSR2) when the supervisor dies (set up by
the first line the worker runs, see supervisor._WORKER_BOOT; its default action ends a worker
that is not serving yet), and the control channel reports end of file or an error. Either
way the worker lets streams in flight finish for ORPHAN_GRACE and is gone within
ORPHAN_DEADLINE (SIGALRM's default action ends it then, whatever it is doing).

SIGTERM sent to a worker directly drains it like the supervisor's "drain"; SIGINT is ignored
(a terminal's Ctrl-C is the supervisor's to handle).

(`families` is asm_proxy.metrics.serving.snapshot(); the supervisor sums the workers'.)
When it stops, a worker sends `{"op": "final", "families": [...]}` unasked, so what it
counted since the last scrape is not lost to the supervisor's totals.
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

from asm_proxy import logs
from asm_proxy.config import ConfigError, config_hash
from asm_proxy.loader import load_text
from asm_proxy.metrics.serving import snapshot
from asm_proxy.server import Server
from asm_proxy.stats import counters

log = logging.getLogger("asm_proxy.worker")

#: What Linux sends a worker when its supervisor dies (prctl PR_SET_PDEATHSIG).
SUPERVISOR_GONE = signal.SIGUSR2
#: A worker whose supervisor is gone gives streams in flight this long to finish...
ORPHAN_GRACE = 0.5
#: ...and ends (SIGALRM, default action) this long after it noticed, stuck or not.
ORPHAN_DEADLINE = 0.9


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
        #: The hash of the config text running now (config_hash()).
        self.config_hash = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orphaned = False

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(json.dumps(message).encode() + b"\n")

    async def run(self, control_fd: int) -> int:
        sock = socket.socket(fileno=control_fd)
        reader, self._writer = await asyncio.open_connection(sock=sock)
        try:
            first = await reader.readline()
            start = json.loads(first) if first else None
        except (OSError, ValueError):
            start = None
        if start is None:
            return 1  # the supervisor went away before saying what to serve
        try:
            loaded = load_text(start["path"], start["config"])
            logs.setup(loaded.settings.log_format, loaded.settings.log_level, worker=self.index)
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
            await server.start(self.listen, take_over=bool(start.get("take_over")), sock=listening)
        except ConfigError as exc:
            self._send({"op": "failed", "error": "; ".join(str(p) for p in exc.problems)})
            return 1
        except Exception as exc:
            self._send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
            return 1
        self.server = server
        self.config_hash = config_hash(start["config"])
        loop = self._loop = asyncio.get_running_loop()
        # A plain handler, not the loop's: it runs even while a hook blocks the loop, and
        # arms the deadline that ends the process if the loop never gets to stop.
        signal.signal(SUPERVISOR_GONE, lambda signum, frame: self.orphaned("it died"))
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
            self._send({"op": "final", "families": snapshot()})
            if self._writer is not None:
                with contextlib.suppress(ConnectionError):
                    await self._writer.drain()
        return 0

    def orphaned(self, how: str) -> None:
        """The supervisor is gone: stop within ORPHAN_DEADLINE. Safe from a signal handler."""
        if self._orphaned or self._loop is None:
            return
        self._orphaned = True
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, ORPHAN_DEADLINE)
        self._loop.call_soon_threadsafe(self._stop_orphan, how)

    def _stop_orphan(self, how: str) -> None:
        server = self.server
        assert server is not None
        log.warning(
            "worker %d: supervisor gone (%s); stopping, %d stream(s) in flight get %.1fs",
            self.index,
            how,
            server.chain.in_flight,
            ORPHAN_GRACE,
        )

        async def stop() -> None:
            with contextlib.suppress(Exception):
                await server.stop(ORPHAN_GRACE)
            os._exit(0)

        asyncio.get_running_loop().create_task(stop())

    async def _control(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._serve_control(reader)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A write to a supervisor that died puts the error on the reader (a broken pipe
            # or a reset), not an end of file: the same news.
            self.orphaned(f"control channel: {exc!r}")
        else:
            self.orphaned("control channel closed")

    async def _serve_control(self, reader: asyncio.StreamReader) -> None:
        server = self.server
        assert server is not None
        while True:
            line = await reader.readline()
            if not line:
                return
            message = json.loads(line)
            op = message.get("op")
            if op == "reload":
                ok = await server.reload(message["config"])
                if ok:
                    self.config_hash = config_hash(message["config"])
                    settings = server.settings
                    logs.setup(settings.log_format, settings.log_level, worker=self.index)
                self._send({"id": message["id"], "ok": ok})
            elif op == "metrics":
                self._send({"id": message["id"], "families": snapshot()})
            elif op == "stats":
                self._send(
                    {
                        "id": message["id"],
                        "index": self.index,
                        "pid": os.getpid(),
                        "address": server.address,
                        "in_flight": server.chain.in_flight,
                        "rss": resident_bytes(),
                        "counters": counters.snapshot(),
                        "config_hash": self.config_hash,
                    }
                )
            elif op == "drain":
                self.drain(float(message["delay"]), float(message["grace"]))
            elif op == "retire":
                self.retire(float(message["grace"]))
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

    def retire(self, grace: float) -> None:
        """Recycled: the replacement already serves on this address. No NOT_SERVING (on a
        shared TCP port the health check may be talking to this worker for all of them):
        stop taking streams now, let those in flight finish, exit."""
        server = self.server
        if self._drain is None and server is not None:
            log.info(
                "worker %d: retiring; %d stream(s) in flight get up to %.0fs",
                self.index,
                server.chain.in_flight,
                grace,
            )
            self._drain = asyncio.get_running_loop().create_task(
                server.stop(grace, not_serving=False)
            )


def resident_bytes() -> int:
    """This process's resident set size (what maxWorkerRss is compared with)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asm-proxy worker")
    # Read by supervisor._WORKER_BOOT before this runs (the parent-death check).
    parser.add_argument("--supervisor-pid", type=int)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--transport")
    parser.add_argument("--listen-fd", type=int)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The config's format and level apply once it has arrived.
    logs.setup("auto", "info", worker=args.index)
    worker = Worker(args.index, args.listen, args.reuse_port, args.transport, args.listen_fd)
    raise SystemExit(run_loop(worker.run(args.control_fd)))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop, or on asyncio's own loop if uvloop is missing or
    ASM_PROXY_LOOP=asyncio. uvloop's cheaper wake-ups and socket I/O take CPU off every
    request on either transport (measured with grpc.aio: about a fifth; docs/PERFORMANCE.md)."""
    if os.environ.get("ASM_PROXY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
