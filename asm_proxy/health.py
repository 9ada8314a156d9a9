"""grpc.health.v1 without a gRPC library: the serving status of each service, Check and Watch.

Every transport serves the same `Health`: Envoy's health checks (and `asm-proxy health`)
ask `Check`; `Watch` streams a service's status as it changes. A draining server says
NOT_SERVING for every service and stays so (`shut_down`), as grpc's own servicer does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from asm_proxy.status import Code, Status
from asm_proxy.wire import AUTHZ_SERVICE, EXT_PROC_SERVICE

SERVICE = "grpc.health.v1.Health"
CHECK_METHOD = f"/{SERVICE}/Check"
WATCH_METHOD = f"/{SERVICE}/Watch"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: What asm-proxy reports on: the server as a whole ("") and each service Envoy calls.
SERVICES = ("", EXT_PROC_SERVICE, AUTHZ_SERVICE)

_ANSWERS: dict[int, bytes] = {
    status: health_pb2.HealthCheckResponse(status=status).SerializeToString()
    for status in (SERVING, NOT_SERVING, SERVICE_UNKNOWN)
}


class Health:
    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._shut_down = False

    def serving(self) -> None:
        """Every service SERVING (unless the server is already shutting down)."""
        if not self._shut_down:
            self._set(dict.fromkeys(SERVICES, SERVING))

    def shut_down(self) -> None:
        """Every service NOT_SERVING, for good: the server is draining or stopping."""
        self._shut_down = True
        self._set(dict.fromkeys(SERVICES, NOT_SERVING))

    def status(self, service: str) -> int | None:
        return self._status.get(service)

    def _set(self, statuses: dict[str, int]) -> None:
        self._status.update(statuses)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def check(self, request: bytes) -> bytes | Status:
        """The answer to a serialized HealthCheckRequest, or the status to end the call."""
        service = _service(request)
        if isinstance(service, Status):
            return service
        status = self._status.get(service)
        if status is None:
            return Status(Code.NOT_FOUND, f"unknown service {service!r}")
        return _ANSWERS[status]

    async def watch(self, request: bytes) -> AsyncIterator[bytes]:
        """Each change of the service's status, the current one first (SERVICE_UNKNOWN for
        a service asm-proxy does not have); ends when the caller goes away."""
        service = _service(request)
        if isinstance(service, Status):
            return
        last = None
        while True:
            status = self._status.get(service, SERVICE_UNKNOWN)
            changed = self._changed
            if status != last:
                last = status
                yield _ANSWERS[status]
            await changed.wait()


def _service(request: bytes) -> str | Status:
    try:
        service: str = health_pb2.HealthCheckRequest.FromString(request).service
        return service
    except DecodeError as exc:
        return Status(Code.INVALID_ARGUMENT, f"not a HealthCheckRequest: {exc}")
