"""The gRPC server: ExternalProcessor, Authorization and Health on one port.

`ServerState` (asm_proxy.state) holds the running settings and chain. A reload builds and
starts a whole new chain first and swaps it in with one assignment; streams already running
keep the chain they started with, and the old chain is closed when the last of them ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from asm_proxy import faults, logs, observe, offload, unix_sockets
from asm_proxy.authz import AuthorizationServicer
from asm_proxy.chain import Chain
from asm_proxy.config import ConfigError, ServerSettings, decode_config
from asm_proxy.loader import Loaded, load, load_text
from asm_proxy.metrics.serving import bind_chain, forget_plugins, record
from asm_proxy.metrics.store import REGISTRY, Registry
from asm_proxy.observe import EXT_PROC, StreamEnd
from asm_proxy.reload import ConfigWatcher
from asm_proxy.state import ServerState
from asm_proxy.stats import counters
from asm_proxy.stream import ProtocolError, Stream
from asm_proxy.tls import CertificateFiles, TlsError, proven_peer
from asm_proxy.wire import (
    AUTHZ_SERVICE,
    EXT_PROC_SERVICE,
    CheckRequest,
    CheckResponse,
    ProcessingRequest,
    ProcessingResponse,
)

log = logging.getLogger("asm_proxy.server")


class _ResetAfterLastAnswer(logging.Filter):
    """grpc.aio logs an error with a traceback when a stream's final status cannot be sent
    because the client has already reset the stream. asm-proxy ends a stream right after
    its last answer, and an Envoy without ext_proc_graceful_grpc_close may reset it as soon
    as it has that answer: expected, so counted instead of logged (each also leaks the
    status batch in grpc.aio, grpc/grpc#43360)."""

    PREFIX = f"ExecuteBatchError raised in core by servicer method [/{EXT_PROC_SERVICE}/"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.PREFIX):
            counters.streams_reset_before_status += 1
            return False
        return True


def _quiet_grpc_resets() -> None:
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ResetAfterLastAnswer) for f in grpc_log.filters):
        grpc_log.addFilter(_ResetAfterLastAnswer())


EXT_PROC_REQUEST = "envoy.service.ext_proc.v3.ProcessingRequest"
CHECK_REQUEST = "envoy.service.auth.v3.CheckRequest"


def _not_a(message: str, exc: DecodeError) -> str:
    """The client's fault in Envoy's names (protobuf's text names asm-proxy's own copy of
    the message type, which a client has never heard of)."""
    reason = str(exc).rpartition("': ")[2] or "undecodable"
    return f"not an {message}: {reason}"


class _Undecodable(Exception):
    """The client sent bytes that are not a ProcessingRequest."""


class ExternalProcessorServicer:
    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        state = self._state
        chain = state.chain
        chain.acquire()
        counters.streams_started += 1
        watching = observe.stream_started(EXT_PROC) if observe.stream_observers else None
        stream: Stream | None = None
        end = StreamEnd.CANCELLED
        try:
            settings = state.settings
            peer = proven_peer(context, settings) if settings.proves_peers else None
            stream = Stream(chain, settings, peer=peer)
            read, write, eof = context.read, context.write, grpc.aio.EOF
            while True:
                # Envoy resets a stream it needs no more instead of closing it: cancelled
                # while waiting here, the exchange is complete (nothing was left unanswered).
                end = StreamEnd.COMPLETE
                try:
                    msg = await read()
                except DecodeError as exc:  # grpc decodes as the message is read
                    raise _Undecodable(_not_a(EXT_PROC_REQUEST, exc)) from None
                if msg is eof:
                    return
                end = StreamEnd.CANCELLED
                reply = await stream.handle(msg)
                if reply is None:
                    continue
                if type(reply) is list:
                    for item in reply:
                        await write(item)
                else:
                    await write(reply)
                if stream.closing:
                    counters.streams_closed_early += 1
                    end = StreamEnd.CLOSED_EARLY
                    return  # nothing more is needed: end the stream (status OK)
        except ProtocolError as exc:
            end = StreamEnd.PROTOCOL_ERROR
            await _client_fault(context, "ext_proc stream", exc.code, exc.message)
        except _Undecodable as exc:
            end = StreamEnd.PROTOCOL_ERROR
            await _client_fault(
                context, "ext_proc stream", grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            )
        except asyncio.CancelledError:
            # Envoy reset the stream instead of ending it: grpc.aio leaks the read it was
            # waiting on (grpc/grpc#43360); Envoy's ext_proc_graceful_grpc_close avoids it.
            counters.streams_cancelled += 1
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            counters.streams_aborted += 1
            end = StreamEnd.INTERNAL_ERROR
            faults.internal_fault("ext_proc stream", exc)
            await context.abort(
                grpc.StatusCode.INTERNAL, "asm-proxy internal error on this stream; see its log"
            )
        finally:
            counters.streams_finished += 1
            chain.release()
            if watching is not None:
                exchange = stream.exchange if stream is not None else None
                observe.stream_ended(watching, EXT_PROC, exchange, end)


def _add_services(server: grpc.aio.Server, state: ServerState) -> None:
    """Register ext_proc and ext_authz under Envoy's service names, with asm-proxy's own
    message classes (asm_proxy.wire) doing the (de)serialization."""
    server.add_registered_method_handlers(
        EXT_PROC_SERVICE,
        {
            "Process": grpc.stream_stream_rpc_method_handler(
                ExternalProcessorServicer(state).Process,
                request_deserializer=ProcessingRequest.FromString,
                response_serializer=ProcessingResponse.SerializeToString,
            )
        },
    )
    server.add_registered_method_handlers(
        AUTHZ_SERVICE, {"Check": authorization_handler(AuthorizationServicer(state))}
    )


async def _client_fault(
    context: grpc.aio.ServicerContext, where: str, code: grpc.StatusCode, reason: str
) -> None:
    """End the call with `code` and `reason`: the client's fault, a throttled WARNING."""
    counters.streams_aborted += 1
    counters.client_faults += 1
    faults.client_fault(where, reason, context.peer())
    await context.abort(code, reason)


def authorization_handler(servicer: AuthorizationServicer) -> grpc.RpcMethodHandler:
    """Check with the request decoded here rather than by grpc: grpc answers an undecodable
    request with UNKNOWN and an ERROR with a traceback in the log for each; it is the
    client's fault (INVALID_ARGUMENT, a throttled WARNING)."""

    async def check(raw: bytes, context: grpc.aio.ServicerContext) -> CheckResponse:
        try:
            request = CheckRequest.FromString(raw)
        except DecodeError as exc:
            await _client_fault(
                context,
                "ext_authz Check",
                grpc.StatusCode.INVALID_ARGUMENT,
                _not_a(CHECK_REQUEST, exc),
            )
            raise  # abort() raised already; this is never reached
        return await servicer.Check(request, context)

    return grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=None, response_serializer=CheckResponse.SerializeToString
    )


def grpc_options(settings: ServerSettings, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # A lone server owns its port: a second server on it must fail, not share silently.
        # Workers share theirs on purpose; the supervisor checks the port is free first.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Envoy keeps its gRPC connection open between requests; let it ping an idle one.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


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


class Server:
    """asm-proxy's gRPC server; `await start()`, then `await stop()`."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        config_path: str | os.PathLike[str] | None = None,
        reuse_port: bool = False,
        watch: bool = True,
        quiet: bool = False,
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
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._watcher: ConfigWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._socket: tuple[Path, int] | None = None  # a Unix socket's path and inode
        self.address = ""
        self.port = 0
        self.certificates: CertificateFiles | None = None
        self._recording = False

    @property
    def settings(self) -> ServerSettings:
        return self.state.settings

    @property
    def chain(self) -> Chain:
        return self.state.chain

    async def start(self, listen: str | None = None, *, take_over: bool = False) -> None:
        """Serve on `listen` (default: the config's). A Unix socket path something still
        serves on is refused, unless `take_over` (a worker replacing another): then this
        server's socket replaces it at the path once it serves."""
        address = listen or self.settings.listen
        offload.configure(self.settings.offload_processes, self.settings.offload_threshold)
        _quiet_grpc_resets()
        self.state.on_retired = self._retired
        logs.decision_log = self.settings.decision_log
        _bind(self.settings, self.state.chain, self.registry)
        self._record(self.settings.metrics)
        if _tracing_asked():
            from asm_proxy import tracing  # the OpenTelemetry SDK: ~60 ms to import

            tracing.configure_once()
        await self.state.chain.start()
        server = grpc.aio.server(options=grpc_options(self.settings, reuse_port=self.reuse_port))
        _add_services(server, self.state)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        bind = address
        path = private = None
        if address.startswith("unix:"):
            path = unix_sockets.check(address)
            if not take_over and path.exists() and unix_sockets.in_use(path):
                raise OSError(f"cannot listen on {address}: another server is serving on it")
            private = unix_sockets.private_name(path)
            bind = f"unix:{private}"
        try:
            if self.settings.tls is not None:
                self.certificates = CertificateFiles(self.settings.tls)
                port = server.add_secure_port(bind, self.certificates.credentials())
            else:
                port = server.add_insecure_port(bind)
        except TlsError as exc:
            raise OSError(f"cannot serve TLS on {address}: {exc}") from None
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not address.startswith("unix:") and port == 0:
            raise OSError(f"cannot listen on {address} (in use?)")
        if private is not None:
            # Who may connect: the socket's permissions (the directory's group, see config);
            # set on the private name, they go with it when it takes over the path.
            os.chmod(private, self.settings.socket_mode)
        await server.start()
        if path is not None and private is not None:
            self._socket = (path, unix_sockets.take_over(private, path))
        self._server = server
        self.port = port
        self.address = (
            address if address.startswith("unix:") else f"{address.rpartition(':')[0]}:{port}"
        )
        for service in ("", EXT_PROC_SERVICE, AUTHZ_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.watch and self.config_path is not None and self.settings.reload_interval > 0:
            self._watcher = ConfigWatcher(
                self.config_path, self.settings.reload_interval, self._reload_settled
            )
            self._watch_task = asyncio.get_running_loop().create_task(self._watcher.run())
        self._info(
            "asm-proxy serving on %s with %d plugin(s): %s",
            self.address,
            len(self.chain.entries),
            ", ".join(e.name for e in self.chain.entries) or "none",
        )

    async def _reload_settled(self, data: bytes) -> bool:
        """The watcher's callback: `data` is the file's content once it stood still."""
        assert self.config_path is not None
        try:
            text = decode_config(self.config_path, data)
        except ConfigError as exc:
            return self._refused(exc)
        return await self.reload(text)

    def _refused(self, exc: ConfigError) -> bool:
        counters.config_reload_failures += 1
        log.error(
            "config %s refused; the running chain stays:\n%s",
            self.config_path,
            "\n".join(f"  {p}" for p in exc.problems),
        )
        return False

    async def reload(self, text: str | None = None) -> bool:
        """Load the config file again (or `text`, as if it were the file's content); on any
        problem keep the running chain."""
        if self.config_path is None:
            return False
        try:
            loaded = load(self.config_path) if text is None else load_text(self.config_path, text)
        except ConfigError as exc:
            return self._refused(exc)
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
        if loaded.settings.listen != self.settings.listen:
            log.warning("listen changed to %s; it takes effect on restart", loaded.settings.listen)
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
        await self.health.enter_graceful_shutdown()
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
            await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self.state.chain.close()
        await offload.close_pool()
        self._record(False)
        if self._socket is not None:
            unix_sockets.release(*self._socket)  # unless a successor has taken the path

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
