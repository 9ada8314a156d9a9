"""asm-proxy's server: ext_proc, ext_authz and health on one address, over one transport.

`ServerState` (asm_proxy.state) holds the running settings and chain. A reload builds and
starts a whole new chain first and swaps it in with one assignment; streams already running
keep the chain they started with, and the old chain is closed when the last of them ends.
What is served (`services.Services`) is the same on every transport (`transport/`):
grpc.aio, or asm-proxy's own over libnghttp2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from asm_proxy import logs, offload, unix_sockets
from asm_proxy.chain import Chain
from asm_proxy.config import ConfigError, ServerSettings, decode_config
from asm_proxy.health import Health
from asm_proxy.loader import Loaded, load, load_text
from asm_proxy.metrics.serving import bind_chain, forget_plugins, record
from asm_proxy.metrics.store import REGISTRY, Registry
from asm_proxy.reload import ConfigWatcher, refused
from asm_proxy.services import Services
from asm_proxy.state import ServerState
from asm_proxy.stats import counters
from asm_proxy.tls import CertificateFiles, TlsError
from asm_proxy.transport import Transport, TransportUnavailable, create, resolve

log = logging.getLogger("asm_proxy.server")


def _tracing_asked() -> bool:
    """Whether the OTEL_* environment asks for traces (asm_proxy.tracing)."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return exporter not in ("", "none") and not disabled


def _bind(settings: ServerSettings, chain: Chain, registry: Registry) -> None:
    """Bind `chain`'s entries and plugins to `registry`, if the server records metrics
    (ValueError if a plugin's metric clashes with one already declared)."""
    if settings.metrics:
        bind_chain(chain, registry)


#: Settings a running server read once, when it started to listen (the transport's
#: limits, the socket, TLS): a reload that changes them is told it must restart.
AT_START = (
    "listen",
    "transport",
    "tls",
    "socket_mode",
    "max_message_bytes",
    "max_concurrent_streams",
)


class Server:
    """asm-proxy's server; `await start()`, then `await stop()`."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        config_path: str | os.PathLike[str] | None = None,
        reuse_port: bool = False,
        watch: bool = True,
        quiet: bool = False,
        transport: str | None = None,
        registry: Registry = REGISTRY,
    ) -> None:
        self.state = ServerState(loaded.settings, loaded.chain)
        #: Where the plugins' metrics and their hooks' go (the process's, which a worker
        #: reports; a test may give a server its own).
        self.registry = registry
        self.config_path = Path(config_path) if config_path is not None else None
        self.reuse_port = reuse_port
        self.watch = watch  # False: reloads come from outside (the supervisor)
        self._info = log.debug if quiet else log.info  # a worker: the supervisor tells
        self.health = Health()
        self.services = Services(self.state, self.health)
        #: The transport's name: the argument, else the config's `transport` (auto resolved).
        self.transport_name = resolve(transport or loaded.settings.transport)
        self._transport: Transport | None = None
        self._watcher: ConfigWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.address = ""
        self.port = 0
        self.certificates: CertificateFiles | None = None
        self._socket: tuple[Path, int] | None = None  # a Unix socket's path and inode
        self._recording = False
        #: The settings the server started with: what AT_START ones a reload is held to.
        self._started = loaded.settings

    @property
    def settings(self) -> ServerSettings:
        return self.state.settings

    @property
    def chain(self) -> Chain:
        return self.state.chain

    async def start(
        self,
        listen: str | None = None,
        *,
        take_over: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        """Serve on `listen` (default: the config's). A Unix socket path something still
        serves on is refused, unless `take_over` (a worker replacing another): then this
        server's socket replaces it at the path once it serves. With `sock`, a listening
        socket the supervisor made for `listen` (asm_proxy/listeners.py; transports that
        can), there is no path to take: the server accepts on the supervisor's socket."""
        address = listen or self.settings.listen
        self._started = self.settings
        offload.configure(self.settings.offload_processes, self.settings.offload_threshold)
        transport = create(self.transport_name)
        self.state.on_retired = self._retired
        logs.decision_log = self.settings.decision_log
        _bind(self.settings, self.state.chain, self.registry)
        self._record(self.settings.metrics)
        if _tracing_asked():
            from asm_proxy import tracing  # the OpenTelemetry SDK: ~60 ms to import

            tracing.configure_once()
        await self.state.chain.start()
        bind = address
        path = private = None
        if address.startswith("unix:") and sock is None:
            path = unix_sockets.check(address)
            if not take_over and path.exists() and unix_sockets.in_use(path):
                raise OSError(f"cannot listen on {address}: another server is serving on it")
            private = unix_sockets.private_name(path)
            bind = f"unix:{private}"
        try:
            if self.settings.tls is not None:
                self.certificates = CertificateFiles(self.settings.tls)
            port = await transport.start(
                bind,
                self.services,
                self.settings,
                reuse_port=self.reuse_port,
                certificates=self.certificates,
                sock=sock,
            )
        except TlsError as exc:
            raise OSError(f"cannot serve TLS on {address}: {exc}") from None
        except TransportUnavailable as exc:
            raise OSError(f"cannot serve on {address}: {exc}") from None
        except OSError as exc:
            # Name the address asked for, not the private name bound first.
            raise OSError(str(exc).replace(bind, address)) from None
        if path is not None and private is not None:
            # Who may connect: the socket's permissions (the directory's group, see config);
            # set on the private name, they go with it when it takes over the path.
            os.chmod(private, self.settings.socket_mode)
            self._socket = (path, unix_sockets.take_over(private, path))
        self._transport = transport
        self.port = port
        self.address = (
            address if address.startswith("unix:") else f"{address.rpartition(':')[0]}:{port}"
        )
        self.health.serving()
        if self.watch and self.config_path is not None and self.settings.reload_interval > 0:
            self._watcher = ConfigWatcher(
                self.config_path, self.settings.reload_interval, self._reload_settled
            )
            self._watch_task = asyncio.get_running_loop().create_task(self._watcher.run())
        self._info(
            "asm-proxy serving on %s (%s) with %d plugin(s): %s",
            self.address,
            self.transport_name,
            len(self.chain.entries),
            ", ".join(e.name for e in self.chain.entries) or "none",
        )

    async def _reload_settled(self, data: bytes) -> bool:
        """The watcher's callback: `data` is the file's content once it stood still."""
        assert self.config_path is not None
        try:
            text = decode_config(self.config_path, data)
        except ConfigError as exc:
            return refused(log, self.config_path, exc)
        return await self.reload(text)

    async def reload(self, text: str | None = None) -> bool:
        """Load the config file again (or `text`, as if it were the file's content); on any
        problem keep the running chain."""
        if self.config_path is None:
            return False
        try:
            loaded = load(self.config_path) if text is None else load_text(self.config_path, text)
        except ConfigError as exc:
            return refused(log, self.config_path, exc)
        try:
            _bind(loaded.settings, loaded.chain, self.registry)
        except ValueError as exc:  # a plugin's metric clashes with one already declared
            counters.config_reload_failures += 1
            log.error("config %s refused: %s", self.config_path, exc)
            return False
        try:
            await loaded.chain.start()
        except Exception as exc:
            counters.config_reload_failures += 1
            log.error("config %s refused: a plugin failed to start: %r", self.config_path, exc)
            await loaded.chain.close()
            return False
        for name in AT_START:
            value = getattr(loaded.settings, name)
            if value != getattr(self._started, name):
                field = ServerSettings.model_fields[name].alias or name
                log.warning("%s changed to %r; it takes effect on restart", field, value)
        self.state.install(loaded.settings, loaded.chain)
        self._record(loaded.settings.metrics)
        logs.decision_log = loaded.settings.decision_log
        offload.configure(loaded.settings.offload_processes, loaded.settings.offload_threshold)
        counters.config_reloads += 1
        self._info(
            "config %s reloaded: %s",
            self.config_path,
            ", ".join(e.name for e in loaded.chain.entries) or "no plugins",
        )
        return True

    def _record(self, on: bool) -> None:
        """Record metrics while this server runs with `metrics: true`."""
        if on != self._recording:
            self._recording = on
            record(on)

    def _retired(self, chain: Chain) -> None:
        """A replaced chain has ended: its plugins' series go unless still configured."""
        forget_plugins((e.name for e in self.state.chain.entries), self.registry)

    def poke_reload(self) -> None:
        if self._watcher is not None:
            self._watcher.poke()

    async def drain(self, delay: float, grace: float) -> None:
        """Health says NOT_SERVING at once; streams are still accepted for `delay` seconds
        (Envoy's health checks or endpoint updates need that long to stop sending), then new
        streams are refused and those in flight get `grace` seconds to finish."""
        self.health.shut_down()
        log.info(
            "draining: NOT_SERVING; refusing new streams in %.1fs; %d in flight",
            delay,
            self.chain.in_flight,
        )
        if delay > 0:
            await asyncio.sleep(delay)
        await self.stop(grace)

    async def stop(self, grace: float | None = 5.0, *, not_serving: bool = True) -> None:
        """Stop taking streams (GOAWAY), give those in flight `grace` seconds, stop.
        `not_serving=False` (a recycled worker whose replacement already serves on the same
        address) leaves health alone: on a shared TCP port Envoy's health check may be
        talking to this worker for the whole address."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if not_serving:
            self.health.shut_down()
        if self._transport is not None:
            await self._transport.stop(grace)
        await self.state.chain.close()
        await offload.close_pool()
        self._record(False)
        if self._socket is not None:
            unix_sockets.release(*self._socket)  # unless a successor has taken the path

    async def wait(self) -> None:
        if self._transport is not None:
            await self._transport.wait()
