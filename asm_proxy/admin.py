"""The admin endpoint: a small HTTP/1.1 listener in the supervisor.

    GET /metrics      every worker's metrics in one scrape (Prometheus text or OpenMetrics)
    GET /healthz      200 while the supervisor runs (liveness)
    GET /readyz       200 once the config is loaded and the workers serve; 503 before that,
                      while draining (SIGTERM) or with no worker alive (readiness)
    GET /config_dump  the running config with secrets redacted, its hash and load time,
                      the chain in running order, what each worker runs
    GET /plugins      the chain's plugins (type, class, version, where they came from) and
                      every plugin type installed

It listens on loopback unless the config says `allowNonLoopback: true` (checked when the
config loads). Even then /config_dump and /plugins answer only loopback clients (`kubectl
port-forward`, `kubectl exec ... curl`): the probes and Prometheus need the rest.

The supervisor serves it, not the workers: it is up before the workers and while they
restart, and one scrape reaches them all. A request is read with a size limit and a
timeout and answered with `Connection: close`; no request can block the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from asm_proxy.config import AdminSettings
from asm_proxy.registry import installed_types, provider

if TYPE_CHECKING:
    from asm_proxy.supervisor import Supervisor

log = logging.getLogger("asm_proxy.admin")

#: Limits on what a client may send.
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0

Response = tuple[int, str, bytes]
Handler = Callable[["AdminServer", str], Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}
_REASONS |= {405: "Method Not Allowed", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable"}
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def _json(status: int, data: Any) -> Response:
    return status, _JSON, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


def _text(status: int, text: str) -> Response:
    return status, _TEXT, text.encode()


def _loopback(peer: Any) -> bool:
    if isinstance(peer, tuple) and peer:
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))
    return False


class AdminServer:
    """Serves the admin endpoint for `supervisor` on `settings.listen`."""

    def __init__(self, supervisor: Supervisor, settings: AdminSettings) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self._server: asyncio.Server | None = None
        self.address = ""
        self.port = 0

    @property
    def url(self) -> str:
        host = self.address.rpartition(":")[0]
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        host, _, port = self.settings.listen.rpartition(":")
        bare = host[1:-1] if host.startswith("[") else host
        try:
            self._server = await asyncio.start_server(self._client, bare, int(port))
        except OSError as exc:
            raise OSError(
                f"cannot serve the admin endpoint on {self.settings.listen}: {exc.strerror}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{self.port}"
        log.info("admin endpoint on http://%s (/metrics /healthz /readyz ...)", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # -- HTTP --------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        try:
            status, content_type, body = await self._answer(head, writer)
        except Exception:
            log.exception("admin endpoint failed")
            status, content_type, body = _text(500, "internal error; see the log\n")
        head_only = head.startswith(b"HEAD ")
        writer.write(
            (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + (b"" if head_only else body)
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> Response:
        if len(head) > MAX_HEAD:
            return _text(400, "request too large\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "bad request line\n")
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return _text(405, "GET or HEAD only\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        handler = _ROUTES.get(path)
        if handler is None:
            return _text(404, "not found; try " + " ".join(_ROUTES) + "\n")
        if path in _LOOPBACK_ONLY and not _loopback(writer.get_extra_info("peername")):
            return _text(403, f"{path} answers loopback clients only\n")
        return await handler(self, headers.get("accept", ""))

    # -- endpoints ---------------------------------------------------------------------

    async def _index(self, accept: str) -> Response:
        return _text(200, "asm-proxy admin: " + " ".join(p for p in _ROUTES if p != "/") + "\n")

    async def _healthz(self, accept: str) -> Response:
        return _text(200, "ok\n")

    async def _readyz(self, accept: str) -> Response:
        sup = self.supervisor
        serving, wanted = len(sup.serving), len(sup.addresses)
        if sup.stopping:
            return _text(503, "not ready: draining\n")
        if not sup.started:
            return _text(503, f"not ready: starting ({serving}/{wanted} workers serving)\n")
        if not sup.ready:
            return _text(503, f"not ready: no worker serving (0/{wanted})\n")
        return _text(200, f"ready: {serving}/{wanted} workers serving\n")

    async def _metrics(self, accept: str) -> Response:
        from asm_proxy.metrics.exposition import render

        sup = self.supervisor
        merged = await sup.metrics()
        workers = [(w.index, w.pid) for w in sup.serving]
        body, content_type = render(merged, sup.state, workers, accept)
        return 200, content_type, body

    async def _config_dump(self, accept: str) -> Response:
        sup = self.supervisor
        stats = await sup.stats()
        dump = dict(sup.config_dump)
        dump["loaded_at"] = sup.loaded_at
        dump["loaded_at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sup.loaded_at))
        dump["workers"] = [
            {
                "index": s["index"],
                "pid": s["pid"],
                "address": s["address"],
                "in_flight": s["in_flight"],
                "config_hash": s.get("config_hash", ""),
            }
            for s in sorted(stats, key=lambda s: int(s["index"]))
        ]
        return _json(200, dump)

    async def _plugins(self, accept: str) -> Response:
        installed = {
            name: {"class": target, "provider": provider(name) or "?"}
            for name, target in installed_types().items()
        }
        return _json(200, {"chain": self.supervisor.plugins, "installed": installed})


_ROUTES: dict[str, Handler] = {
    "/": AdminServer._index,
    "/metrics": AdminServer._metrics,
    "/healthz": AdminServer._healthz,
    "/readyz": AdminServer._readyz,
    "/config_dump": AdminServer._config_dump,
    "/plugins": AdminServer._plugins,
}
_LOOPBACK_ONLY = frozenset({"/config_dump", "/plugins"})
