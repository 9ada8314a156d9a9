"""The supervisor and its worker processes: one server per core (asm_proxy.transport).

Python runs one thread of Python at a time, so asm-proxy scales across cores with
processes. The supervisor serves no traffic itself. It

- checks the config (the same checks and messages as `asm-proxy validate`) and the address,
  then starts N workers, each a `Server` on its own event loop;
- shares the address between them: on TCP every worker binds the same port with
  SO_REUSEPORT and the kernel spreads *connections* over them (the supervisor first makes
  sure nothing else listens there, and holds the port while workers come and go); a Unix
  socket becomes one socket per worker, `PATH.0`, `PATH.1`, ..., which Envoy's cluster lists
  as endpoints (with one worker the path is used as given);
- restarts a worker that dies, at once (with a backoff only when it keeps dying);
- recycles a worker past `maxStreamsPerWorker` streams or `maxWorkerRss` bytes: its
  replacement starts and serves on the same address first (a Unix socket path is taken
  over by an atomic rename, see unix_sockets), then the old one stops taking streams,
  finishes those in flight and exits;
- fans config reloads out: it watches the file, checks a new one once, and hands every
  worker the same text; each swaps atomically, and if any refuses, those that had already
  swapped are put back, so all keep running the same config;
- drains on SIGTERM: workers report NOT_SERVING, keep accepting streams for `drainDelay`,
  then refuse new ones while those in flight get `drainTimeout` to finish. A second signal
  stops at once.

Workers are fresh interpreters (`python -c ...`), not forks: nothing of the supervisor's
state (plugin objects built while checking the config, threads, gRPC internals) leaks into
them. Supervisor and worker talk over a socketpair, one JSON object a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from asm_proxy import __version__, listeners, logs, unix_sockets
from asm_proxy.admin import AdminServer
from asm_proxy.config import (
    AdminSettings,
    ConfigError,
    ServerSettings,
    config_hash,
    decode_config,
    read_config_bytes,
)
from asm_proxy.config_dump import describe_plugins, dump_config
from asm_proxy.loader import Loaded, load_text
from asm_proxy.metrics.exposition import Merged, Totals
from asm_proxy.namespaces import NamespaceFiles, compose
from asm_proxy.reload import SETTLE, ConfigWatcher, refused
from asm_proxy.stats import counters
from asm_proxy.transport import resolve

log = logging.getLogger("asm_proxy.supervisor")

#: How long a new worker may take to load its config and start serving.
START_TIMEOUT = 60.0
#: A worker that lived at least this long is restarted at once; one that died sooner
#: (a crash loop) waits, doubling from RESTART_BACKOFF up to RESTART_BACKOFF_MAX.
STABLE_AFTER = 10.0
RESTART_BACKOFF = 0.25
RESTART_BACKOFF_MAX = 5.0
#: How often the workers' stream counts and RSS are compared with the recycling limits.
RECYCLE_CHECK = 2.0

#: A worker's first lines, before any import of weight: Linux is asked to send SIGUSR2
#: (worker.SUPERVISOR_GONE; its default action ends the process) when the supervisor dies
#: (prctl PR_SET_PDEATHSIG = 1); a supervisor that died before that is seen by the parent pid
#: no longer being its own. Then the worker proper.
_WORKER_BOOT = """\
import os, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGUSR2), 0, 0, 0)
    if os.getppid() != int(sys.argv[sys.argv.index("--supervisor-pid") + 1]):
        os._exit(3)
from asm_proxy.worker import main
main()
"""


class WorkerStartError(RuntimeError):
    """A worker could not start serving (its config, its address, or it died)."""


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_addresses(listen: str, workers: int) -> list[str]:
    """The address each worker serves on: a TCP address is shared, a Unix socket path gets
    the worker's index appended (`unix:/run/x.sock` -> `unix:/run/x.sock.0`, ...) unless
    there is only one worker."""
    if listen.startswith("unix:") and workers > 1:
        return [f"{listen}.{i}" for i in range(workers)]
    return [listen] * workers


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


def reserve_tcp_port(listen: str) -> tuple[socket.socket, str]:
    """Check that nothing listens on `listen` (HOST:PORT, port 0 picks one) and hold the
    port with a bound, never-listening SO_REUSEPORT socket, so workers can bind it, and
    rebind it after a restart, while no other program can. Returns (holder, HOST:PORT)."""
    host, port = _split(listen)
    bare = host[1:-1] if host.startswith("[") else host
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from None
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Without SO_REUSEPORT this bind fails if anything at all listens on the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise OSError(f"cannot listen on {listen}: {exc.strerror} (in use?)") from None
    finally:
        probe.close()
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((sockaddr[0], port, *sockaddr[2:]))
    except OSError as exc:
        holder.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror} (in use?)") from None
    return holder, f"{host}:{port}"


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")


class WorkerHandle:
    """The supervisor's side of one worker process."""

    def __init__(
        self,
        index: int,
        address: str,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.index = index
        self.address = address
        self.proc = proc
        self.pid = proc.pid
        self.reader = reader
        self.writer = writer
        self.started_at = 0.0
        #: Replaced on purpose (recycled): its exit is no crash to restart from.
        self.retired = False
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        #: Its metrics as last reported (a scrape, or its final word when it stopped).
        self.last_metrics: list[dict[str, Any]] | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def listen(self) -> None:
        """Start reading the worker's replies (after it said it is ready)."""
        self._reader_task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if message.get("op") == "final":
                    self.last_metrics = message.get("families")
                    continue
                future = self._pending.pop(message.get("id", 0), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (ConnectionError, ValueError) as exc:
            log.warning("worker %d: control channel failed: %r", self.index, exc)
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {self.index} is gone"))
        self._pending.clear()

    async def request(self, message: dict[str, Any], wait: float = 30.0) -> dict[str, Any]:
        """Send `message`, wait for the worker's reply to it."""
        if not self.alive or self.writer.is_closing():
            raise ConnectionError(f"worker {self.index} is gone")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        _send(self.writer, {**message, "id": request_id})
        await self.writer.drain()
        return await asyncio.wait_for(future, wait)

    def tell(self, message: dict[str, Any]) -> None:
        """Send `message` without waiting for a reply (drain, stop)."""
        if self.alive and not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                _send(self.writer, message)

    async def finished(self, wait: float = 1.0) -> None:
        """Wait (a little) until everything the exited worker wrote has been read."""
        if self._reader_task is not None and not self._reader_task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader_task), wait)

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self.writer.close()


class Supervisor:
    """Starts, watches, reloads and drains the workers; `await start()`, then
    `await shutdown()` (or `force()`)."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        listen: str | None = None,
        workers: int | None = None,
        admin: str | None = None,
        transport: str | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self._listen = listen
        self._workers = workers
        #: Overrides the config's `transport` (`serve --transport`).
        self.transport = transport
        #: Listening sockets the workers inherit, one per worker index (nghttp2 transport).
        self.sockets: list[listeners.Listening] = []
        self.settings = ServerSettings()
        self.workers: list[WorkerHandle] = []
        self.addresses: list[str] = []
        self.restarts = 0
        self._main = ""  # the config file as last accepted
        self._text = ""  # what the workers run: that, with the namespace files' plugins
        self._namespaces: NamespaceFiles | None = None
        self._holder: socket.socket | None = None
        self._stopping = False
        self._watcher: ConfigWatcher | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._retiring: set[WorkerHandle] = set()  # recycled workers still finishing streams
        self._useless_rss_limit = 0  # a maxWorkerRss a fresh worker is already above
        #: What the admin endpoint and the metrics tell about the running config.
        self.config_hash = ""
        self.loaded_at = 0.0
        self.plugins: list[dict[str, Any]] = []
        self.config_dump: dict[str, Any] = {}
        #: Every worker has said it serves once (workers restarting later keep it true).
        self.started = False
        self.totals = Totals()
        self.admin: AdminServer | None = None
        self._admin_listen = admin
        #: `asm-proxy serve`: the config's log format and level are the process's.
        self.owns_logging = False

    # -- starting ------------------------------------------------------------------

    def _read(self, data: bytes | None = None) -> tuple[str, str, Loaded]:
        """Check the file (or `data`, its content as the watcher saw it settle) with the
        same loader and messages as `validate`; raises ConfigError. Returns the file's
        text, and the config the workers run (with the namespace files' plugins, if any)
        as text and loaded."""
        if data is None:
            data = read_config_bytes(self.config_path)
        main = decode_config(self.config_path, data)
        # The file alone first, so its problems carry its own line numbers (the composed
        # text below is re-dumped YAML); with `namespaces:` its plugins are built twice.
        loaded = load_text(self.config_path, main)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        namespaces = loaded.settings.namespaces
        if namespaces is None:
            self._namespaces = None
            return main, main, loaded
        files = self._namespaces
        if files is None or files.settings != namespaces:
            files = NamespaceFiles(namespaces, self.config_path)
            files.load()  # a refused file is logged, and its namespace fails closed
        text = compose(main, files.entries())
        composed = load_text(self.config_path, text)
        self._namespaces = files
        return main, text, composed

    def _running(self, text: str, loaded: Loaded) -> None:
        """Remember what the workers now run, for /config_dump, /plugins and metrics."""
        self._text, self.settings = text, loaded.settings
        self.config_hash = config_hash(text)
        self.loaded_at = time.time()
        self.plugins = describe_plugins(loaded.chain)
        self.config_dump = dump_config(text, loaded)

    async def start(self) -> None:
        """Check the config and the address, start every worker; raises ConfigError or
        OSError (nothing left running) if that cannot be done."""
        self._main, text, loaded = self._read()
        self._running(text, loaded)
        names = [e.name for e in loaded.chain.entries]
        listen = self._listen or self.settings.listen
        admin = self._admin_settings()
        if admin is not None:
            self.admin = AdminServer(self, admin)
            await self.admin.start()  # raises OSError: nothing else started yet
        count = self._workers or self.settings.workers or default_workers()
        if not listen.startswith("unix:"):
            self._holder, listen = reserve_tcp_port(listen)
        self.addresses = worker_addresses(listen, count)
        for address in self.addresses:
            if address.startswith("unix:"):  # once here, not N times by the workers
                path = unix_sockets.check(address)
                if path.exists() and unix_sockets.in_use(path):
                    raise OSError(f"cannot listen on {address}: another server is serving on it")
        if self._holds_sockets(listen, count):
            try:
                self._listen_for_workers()
            except OSError:
                self._release()
                raise
        results = await asyncio.gather(
            *(self._spawn(i) for i in range(count)), return_exceptions=True
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        for result in results:
            if isinstance(result, WorkerHandle):
                self.workers.append(result)
        if failure is not None:
            await self._kill_all()
            self._release()
            if self.admin is not None:
                await self.admin.stop()
            if isinstance(failure, WorkerStartError):
                raise OSError(str(failure))
            raise failure
        for handle in self.workers:
            self._watch(handle)
        self.started = True
        self._spawn_task(self._recycle_when_due())
        if self.settings.reload_interval > 0:
            self._watcher = ConfigWatcher(
                self.config_path,
                self.settings.reload_interval,
                self.reload,
                initial=self._main.encode(),
            )
            self._spawn_task(self._watcher.run())
            self._spawn_task(self._watch_namespaces())
        log.info(
            "asm-proxy serving on %s with %d worker(s) (pids %s) and %d plugin(s): %s",
            ", ".join(dict.fromkeys(self.addresses)),
            count,
            ",".join(str(w.pid) for w in self.workers),
            len(names),
            ", ".join(names) or "none",
        )

    def _holds_sockets(self, listen: str, count: int) -> bool:
        """Whether the supervisor makes the listening sockets (listeners.py): only a
        transport that accepts on an inherited socket can use them (nghttp2), and on Unix
        sockets only with one worker. With several, a dead worker's path refusing connects
        is better: Envoy retries the stream on another worker at once and ejects the path
        (envoy_cluster.py), where a held socket queues it until the replacement serves
        (~0.5 s; measured in docs/RELIABILITY.md). With one there is nowhere else to go, and
        the queue turns a restart's failures into waits. TCP: the workers' SO_REUSEPORT
        sockets, held, keep the connections queued on a dead worker's socket."""
        if resolve(self.transport or self.settings.transport) != "nghttp2":
            return False
        return count == 1 or not listen.startswith("unix:")

    def _listen_for_workers(self) -> None:
        """The supervisor's own listening sockets (see asm_proxy/listeners.py)."""
        for address in self.addresses:
            if address.startswith("unix:"):
                made = listeners.unix_listener(address, self.settings.socket_mode)
            else:
                made = listeners.tcp_listener(address)
            self.sockets.append(made)

    async def _spawn(self, index: int, *, take_over: bool = False) -> WorkerHandle:
        """Start worker `index` and wait until it serves. `take_over`: its Unix socket path
        may be held by a live worker (one being recycled): replace it there (not with a
        socket the supervisor holds: the replacement accepts on that same socket)."""
        address = self.addresses[index]
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The worker imports plugins exactly as this process would.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        argv = [
            "--supervisor-pid",
            str(os.getpid()),
            "--index",
            str(index),
            "--control-fd",
            str(theirs.fileno()),
            "--listen",
            address,
        ]
        if not address.startswith("unix:"):
            argv.append("--reuse-port")
        if self.transport is not None:
            argv += ["--transport", self.transport]
        fds = [theirs.fileno()]
        if self.sockets:
            fds.append(self.sockets[index].fileno())
            argv += ["--listen-fd", str(fds[-1])]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER_BOOT,
                *argv,
                pass_fds=fds,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        handle = WorkerHandle(index, address, proc, reader, writer)
        _send(
            writer,
            {
                "op": "start",
                "path": str(self.config_path),
                "config": self._text,
                "take_over": take_over,
            },
        )
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT)
            message = json.loads(line) if line else {}
        except (TimeoutError, ValueError, ConnectionError):
            message = {}
        except BaseException:  # cancelled (shutdown): no half-started worker left behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            handle.close()
            raise
        if message.get("op") != "ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            handle.close()
            reason = message.get("error") or f"exited with {proc.returncode} (see its log)"
            raise WorkerStartError(f"worker {index} on {address} did not start: {reason}")
        handle.started_at = asyncio.get_running_loop().time()
        handle.listen()
        return handle

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- restarting ----------------------------------------------------------------

    def _watch(self, handle: WorkerHandle) -> None:
        self._spawn_task(self._keep_alive(handle))

    async def _keep_alive(self, handle: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        code = await handle.proc.wait()
        await handle.finished()
        handle.close()
        self.totals.retire(handle.last_metrics)
        handle.last_metrics = None
        self._retiring.discard(handle)
        if self._stopping or handle.retired:
            return
        await self._restart(handle, code, loop.time())

    async def _restart(self, handle: WorkerHandle, code: int | None, died_at: float) -> None:
        """Start a worker in the place of `handle`, which exited with `code`."""
        loop = asyncio.get_running_loop()
        lived = died_at - handle.started_at
        backoff = 0.0 if lived >= STABLE_AFTER else RESTART_BACKOFF
        log.warning(
            "worker %d (pid %d) exited with %s after %.1fs; restarting",
            handle.index,
            handle.pid,
            code,
            lived,
        )
        while not self._stopping:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                # Take over: the dead worker's socket file is still there (and a worker
                # that was being recycled when this one died may still serve on it).
                new = await self._spawn(handle.index, take_over=True)
            except WorkerStartError as exc:
                log.error("%s; trying again", exc)
                backoff = min(max(backoff * 2, RESTART_BACKOFF), RESTART_BACKOFF_MAX)
                continue
            if self.stopping:  # set while we awaited (a property: mypy narrows attributes)
                new.tell({"op": "stop"})
                return
            self.workers[handle.index] = new
            self.restarts += 1
            counters.worker_restarts += 1
            log.info(
                "worker %d restarted as pid %d, serving %.0fms after the old one died",
                new.index,
                new.pid,
                (loop.time() - died_at) * 1000,
            )
            self._watch(new)
            return

    # -- recycling -----------------------------------------------------------------

    async def _recycle_when_due(self) -> None:
        """Every RECYCLE_CHECK seconds, recycle the workers past a limit, one at a time."""
        while not self._stopping:
            await asyncio.sleep(RECYCLE_CHECK)
            if not any(self._limits()):
                continue
            for stats in await self.stats():
                reason = _due(stats, *self._limits())  # limits as they are after a recycle
                handle = self.workers[stats["index"]]
                if reason and handle.pid == stats["pid"] and not self._stopping:
                    await self.recycle(handle, reason)

    def _limits(self) -> tuple[int, int]:
        """(maxStreamsPerWorker, maxWorkerRss), 0 for none (an RSS limit below a fresh
        worker is none)."""
        rss = self.settings.max_worker_rss
        return self.settings.max_streams_per_worker, 0 if rss == self._useless_rss_limit else rss

    async def recycle(self, old: WorkerHandle, reason: str) -> bool:
        """Start `old`'s replacement; once it serves, `old` stops taking streams and
        finishes those in flight (up to drainTimeout). False if the replacement failed to
        start (`old` keeps serving; a later check tries again)."""
        log.info("worker %d (pid %d) %s; starting its replacement", old.index, old.pid, reason)
        old.retired = True  # from now on its exit is expected, not a crash
        try:
            new = await self._spawn(old.index, take_over=True)
        except WorkerStartError as exc:
            log.error("%s; worker %d keeps serving", exc, old.index)
            old.retired = False
            if not old.alive:  # it died meanwhile, unwatched: restart it as a crash
                loop = asyncio.get_running_loop()
                self._spawn_task(self._restart(old, old.proc.returncode, loop.time()))
            return False
        if self._stopping:
            new.tell({"op": "stop"})
            return False
        self.workers[old.index] = new
        self._watch(new)
        if old.alive:
            self._retiring.add(old)
        counters.worker_recycles += 1
        old.tell({"op": "retire", "grace": self.settings.drain_timeout})
        log.info(
            "worker %d recycled: pid %d serves, pid %d finishes its streams in flight",
            old.index,
            new.pid,
            old.pid,
        )
        await self._check_rss_limit(new)
        return True

    async def _check_rss_limit(self, new: WorkerHandle) -> None:
        """A limit below what a fresh worker already holds would recycle every worker at
        every check: say so once, and recycle on RSS no more until the limit changes."""
        limit = self.settings.max_worker_rss
        if not limit or limit == self._useless_rss_limit:
            return
        with contextlib.suppress(ConnectionError, TimeoutError):
            rss = int((await new.request({"op": "stats"}, wait=10)).get("rss", 0))
            if rss >= limit:
                self._useless_rss_limit = limit
                log.warning(
                    "a fresh worker already holds %.0f MiB, above maxWorkerRss (%.0f MiB): "
                    "not recycling on memory until the limit is raised",
                    rss / 2**20,
                    limit / 2**20,
                )

    # -- reloading -----------------------------------------------------------------

    def poke_reload(self) -> None:
        """Check the config file now (SIGHUP)."""
        if self._watcher is not None:
            self._watcher.poke()
        else:
            self._spawn_task(self.reload())

    async def reload(self, data: bytes | None = None) -> bool:
        """Check the file (or `data`, its settled content) once; if good, every worker swaps
        to it (or none does)."""
        async with self._reload_lock:
            try:
                main, text, loaded = self._read(data)
            except ConfigError as exc:
                return refused(log, self.config_path, exc)
            settings = loaded.settings
            names = [e.name for e in loaded.chain.entries]
            if not await self._swap(text):
                return False
            if settings.listen != self.settings.listen or settings.workers != self.settings.workers:
                log.warning("listen and workers changes take effect on restart")
            if settings.admin != self.settings.admin:
                log.warning("admin changes take effect on restart")
            self._main = main
            self._running(text, loaded)
            if self.owns_logging:
                logs.setup(settings.log_format, settings.log_level)
            log.info(
                "config %s reloaded in %d worker(s): %s",
                self.config_path,
                len(self.workers),
                ", ".join(names) or "no plugins",
            )
            return True

    async def _swap(self, text: str) -> bool:
        """Every live worker runs `text` (checked already), or none does."""
        workers = [w for w in self.workers if w.alive]
        replies = await asyncio.gather(
            *(w.request({"op": "reload", "config": text}) for w in workers),
            return_exceptions=True,
        )
        swapped = [w for w, r in zip(workers, replies, strict=True) if _ok(r)]
        if len(swapped) < len(workers):
            refused = [w.index for w in workers if w not in swapped]
            log.error(
                "config %s refused: worker(s) %s could not start its plugins (see their "
                "log); the running chain stays",
                self.config_path,
                refused,
            )
            await asyncio.gather(
                *(w.request({"op": "reload", "config": self._text}) for w in swapped),
                return_exceptions=True,
            )
            counters.config_reload_failures += 1
            return False
        self._text = text
        counters.config_reloads += 1
        return True

    async def _watch_namespaces(self) -> None:
        """Poll the namespace directory; a changed file swaps in only its namespace."""
        while True:
            await asyncio.sleep(self.settings.reload_interval or 1.0)
            files = self._namespaces
            if files is None:
                continue
            try:
                if await files.refresh(SETTLE):
                    await self._reload_namespaces(files)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("namespace reload failed")

    async def _reload_namespaces(self, files: NamespaceFiles) -> None:
        async with self._reload_lock:
            if files is not self._namespaces:
                return  # the config file changed the directory meanwhile
            text = compose(self._main, files.entries())
            try:
                loaded = load_text(self.config_path, text)
            except ConfigError as exc:  # each file loaded alone; together they should too
                counters.config_reload_failures += 1
                log.error(
                    "namespace plugins refused; the running chain stays:\n%s",
                    "\n".join(f"  {p}" for p in exc.problems),
                )
                return
            if await self._swap(text):
                self._running(text, loaded)
                log.info(
                    "namespace plugins reloaded in %d worker(s): %s",
                    len(self.workers),
                    ", ".join(e.name for e in loaded.chain.entries) or "no plugins",
                )

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- looking in ----------------------------------------------------------------

    async def stats(self) -> list[dict[str, Any]]:
        """Each live worker's {index, pid, address, in_flight, counters}."""
        workers = [w for w in self.workers if w.alive]
        replies = await asyncio.gather(
            *(w.request({"op": "stats"}, wait=10) for w in workers), return_exceptions=True
        )
        return [r for r in replies if isinstance(r, dict)]

    async def metrics(self) -> dict[str, Merged]:
        """Every worker's metrics summed (recycled ones still finishing streams too), with
        what workers now gone had counted."""
        workers = [w for w in (*self.workers, *self._retiring) if w.alive]
        replies = await asyncio.gather(
            *(w.request({"op": "metrics"}, wait=10) for w in workers), return_exceptions=True
        )
        live = []
        for worker, reply in zip(workers, replies, strict=True):
            if isinstance(reply, dict):
                worker.last_metrics = reply["families"]
            if worker.last_metrics is not None:
                live.append(worker.last_metrics)
        return self.totals.with_live(live)

    @property
    def serving(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.alive]

    @property
    def ready(self) -> bool:
        """Config loaded, every worker has started, one serves now, and not draining."""
        return self.started and not self._stopping and bool(self.serving)

    def state(self) -> dict[str, Any]:
        """What the supervisor knows of itself (metrics, /readyz, /config_dump)."""
        return {
            "workers": len(self.addresses),
            "workers_serving": len(self.serving),
            "restarts": self.restarts,
            "reloads": {"ok": counters.config_reloads, "failed": counters.config_reload_failures},
            "recycles": counters.worker_recycles,
            "config_file_unusable": counters.config_file_unusable,
            "config_file_unusable_events": counters.config_file_unusable_events,
            "config_file_unsettled": counters.config_file_unsettled,
            "config_hash": self.config_hash,
            "config_file": str(self.config_path),
            "loaded_at": self.loaded_at,
            "plugins": self.plugins,
            "ready": self.ready,
            "draining": self._stopping,
            "version": __version__,
        }

    def _admin_settings(self) -> AdminSettings | None:
        if self._admin_listen is None:
            return self.settings.admin
        base = self.settings.admin or AdminSettings()
        return AdminSettings(listen=self._admin_listen, allow_non_loopback=base.allow_non_loopback)

    def own_stats(self) -> dict[str, Any]:
        """The supervisor's own {pid, counters}: reloads, restarts, recycles, the config
        file's state."""
        return {"pid": os.getpid(), "counters": counters.snapshot()}

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.alive]

    # -- stopping ------------------------------------------------------------------

    async def shutdown(self, delay: float | None = None, grace: float | None = None) -> None:
        """Drain every worker (see the module doc) and wait for them to exit; whatever is
        still running `delay + grace + 5` seconds later is killed."""
        delay = self.settings.drain_delay if delay is None else delay
        grace = self.settings.drain_timeout if grace is None else grace
        self._stopping = True
        self._stop_tasks()
        log.info(
            "draining %d worker(s): NOT_SERVING now, new streams refused in %.1fs",
            len(self.pids),
            delay,
        )
        for handle in self.workers:
            handle.tell({"op": "drain", "delay": delay, "grace": grace})
        # Workers stop accepting after `delay`; so does the socket they shared with us.
        closing = asyncio.get_running_loop().call_later(delay, listeners.close, self.sockets)
        await self._wait_all(delay + grace + 5.0)
        closing.cancel()
        self._release()
        if self.admin is not None:
            await self.admin.stop()

    async def force(self) -> None:
        """Stop now: streams in flight are cut; stragglers are killed after 2 seconds."""
        self._stopping = True
        self._stop_tasks()
        for handle in (*self.workers, *self._retiring):
            handle.tell({"op": "stop"})
        await self._wait_all(2.0)
        self._release()
        if self.admin is not None:
            await self.admin.stop()

    def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _wait_all(self, limit: float) -> None:
        procs = [w.proc for w in (*self.workers, *self._retiring)]
        if not procs:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in procs], timeout=limit
        )
        if pending:
            log.warning("%d worker(s) did not stop in time; killing them", len(pending))
            await self._kill_all()
        for handle in (*self.workers, *self._retiring):
            handle.close()

    async def _kill_all(self) -> None:
        everyone = (*self.workers, *self._retiring)
        for handle in everyone:
            if handle.alive:
                with contextlib.suppress(ProcessLookupError):
                    handle.proc.kill()
        for handle in everyone:
            await handle.proc.wait()

    def _release(self) -> None:
        listeners.close(self.sockets)
        if self._holder is not None:
            self._holder.close()
            self._holder = None


def _due(stats: dict[str, Any], max_streams: int, max_rss: int) -> str | None:
    """Why a worker with these stats is due for recycling, or None."""
    started = int(stats.get("counters", {}).get("streams_started", 0))
    rss = int(stats.get("rss", 0))
    if max_streams and started >= max_streams:
        return f"served {started} streams (maxStreamsPerWorker {max_streams})"
    if max_rss and rss >= max_rss:
        return f"holds {rss / 2**20:.0f} MiB (maxWorkerRss {max_rss / 2**20:.0f} MiB)"
    return None


def _ok(reply: object) -> bool:
    return isinstance(reply, dict) and bool(reply.get("ok"))


async def supervise(
    config_path: str,
    listen: str | None = None,
    workers: int | None = None,
    admin: str | None = None,
    transport: str | None = None,
) -> None:
    """`asm-proxy serve`: run until SIGTERM/SIGINT (drain) or a second one (stop now);
    SIGHUP checks the config file at once."""
    supervisor = Supervisor(
        config_path, listen=listen, workers=workers, admin=admin, transport=transport
    )
    supervisor.owns_logging = True
    await supervisor.start()
    settings = supervisor.settings
    logs.setup(settings.log_format, settings.log_level)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    forced: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        elif not forced:
            log.warning("second signal: stopping now")
            forced.append(loop.create_task(supervisor.force()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, supervisor.poke_reload)
    await stop.wait()
    await supervisor.shutdown()
    if forced:
        await forced[0]
    log.info("stopped")
