"""The grpc.aio transport: grpcio's C core under asyncio. Always available.

Every method is registered with no (de)serializer: grpc moves bytes, `Services` parses.
Statuses map one to one onto `grpc.StatusCode`. mTLS uses grpc's dynamic credentials,
which ask `CertificateFiles.fetch` at each handshake (rotation without a restart).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from asm_proxy.caller import Caller
from asm_proxy.health import SERVICE as HEALTH_SERVICE
from asm_proxy.stats import counters
from asm_proxy.status import Code, Status
from asm_proxy.tls import XFCC_HEADER, Certificates
from asm_proxy.wire import AUTHZ_SERVICE, EXT_PROC_SERVICE

if TYPE_CHECKING:
    from asm_proxy.config import ServerSettings
    from asm_proxy.services import Services
    from asm_proxy.tls import CertificateFiles

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: The auth context key grpc puts the peer certificate's subject alternative names under.
_SAN_KEY = "x509_subject_alternative_name"


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


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    sans = context.auth_context().get(_SAN_KEY, ())
    xfcc = None
    for key, value in context.invocation_metadata() or ():
        if key == XFCC_HEADER:
            xfcc = value
            break
    return Caller(sans=tuple(v.decode("utf-8", "replace") for v in sans), xfcc=xfcc)


class _Call:
    """One call as `Services` sees it."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def caller(self) -> Caller:
        return caller_of(self._context)

    def peer(self) -> str:
        peer: str = self._context.peer()
        return peer

    async def read(self) -> bytes | None:
        message = await self._context.read()
        if message is grpc.aio.EOF:
            return None
        data: bytes = message
        return data

    async def write(self, message: bytes) -> None:
        await self._context.write(message)


async def _end(context: grpc.aio.ServicerContext, status: Status) -> None:
    await context.abort(_GRPC_CODES[status.code], status.message)


def _handlers(services: Services) -> list[tuple[str, dict[str, Any]]]:
    async def process(_requests: object, context: grpc.aio.ServicerContext) -> None:
        try:
            status = await services.process(_Call(context))
        except asyncio.CancelledError:
            # Envoy reset the stream instead of ending it: grpc.aio leaks the read it was
            # waiting on (grpc/grpc#43360); Envoy's ext_proc_graceful_grpc_close avoids it.
            counters.streams_cancelled += 1
            raise
        if status.code is not Code.OK:
            await _end(context, status)

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        answer = await services.check(request, _Call(context))
        if isinstance(answer, Status):
            await _end(context, answer)
            raise AssertionError("abort() raises")
        return answer

    async def health_check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        answer = services.health.check(request)
        if isinstance(answer, Status):
            await _end(context, answer)
            raise AssertionError("abort() raises")
        return answer

    async def health_watch(
        request: bytes, _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for answer in services.health.watch(request):
            yield answer

    return [
        (EXT_PROC_SERVICE, {"Process": grpc.stream_stream_rpc_method_handler(process)}),
        (AUTHZ_SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(check)}),
        (
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(health_check),
                "Watch": grpc.unary_stream_rpc_method_handler(health_watch),
            },
        ),
    ]


def grpc_options(settings: ServerSettings, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # A lone server owns its port: a second server on it must fail, not share silently.
        # Workers share theirs on purpose; the supervisor checks the port is free first.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Envoy keeps its gRPC connection open between requests; let it ping an idle one.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _configuration(certificates: Certificates) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(certificates.key, certificates.cert)], root_certificates=certificates.client_ca
    )


def credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    def fetch() -> Any:
        new = files.fetch()
        return None if new is None else _configuration(new)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(files.current),
        fetch,
        require_client_authentication=files.settings.require_client_cert,
    )


class GrpcioTransport:
    name = "grpcio"

    def __init__(self) -> None:
        self._server: grpc.aio.Server | None = None

    async def start(
        self,
        address: str,
        services: Services,
        settings: ServerSettings,
        *,
        reuse_port: bool,
        certificates: CertificateFiles | None,
        sock: socket.socket | None,
    ) -> int:
        if sock is not None:
            raise OSError("the grpcio transport cannot serve on an inherited socket")
        _quiet_grpc_resets()
        server = grpc.aio.server(options=grpc_options(settings, reuse_port=reuse_port))
        for service, methods in _handlers(services):
            server.add_registered_method_handlers(service, methods)
        try:
            if certificates is not None:
                port = server.add_secure_port(address, credentials(certificates))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not address.startswith("unix:") and port == 0:
            raise OSError(f"cannot listen on {address} (in use?)")
        await server.start()
        self._server = server
        return 0 if address.startswith("unix:") else port

    async def stop(self, grace: float | None) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
