"""The transport-free pieces every transport shares: statuses on the wire, health."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from asm_proxy.health import NOT_SERVING, SERVICE_UNKNOWN, SERVICES, SERVING, Health
from asm_proxy.status import Code, Status, encode_message
from asm_proxy.transport import available, resolve


def request(service: str) -> bytes:
    return health_pb2.HealthCheckRequest(service=service).SerializeToString()


def status_of(answer: bytes | Status) -> int:
    assert isinstance(answer, bytes)
    return health_pb2.HealthCheckResponse.FromString(answer).status  # type: ignore[no-any-return]


class TestStatus:
    def test_grpc_message_is_percent_encoded_outside_printable_ascii(self) -> None:
        """gRPC's rule for grpc-message: UTF-8, '%' and non-printables percent-encoded."""
        assert encode_message("a b: 100% \u00e9\n") == b"a b: 100%25 %C3%A9%0A"

    def test_codes_are_grpcs(self) -> None:
        assert (Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED, Code.UNAUTHENTICATED) == (3, 12, 16)
        assert Status(Code.OK).ok and not Status(Code.INTERNAL, "x").ok


class TestHealth:
    def test_serving_then_shut_down_for_good(self) -> None:
        """Every service is SERVING once started; draining makes all NOT_SERVING, and a
        later serving() does not bring them back."""

        async def run() -> None:
            health = Health()
            assert health.check(request("")) == Status(Code.NOT_FOUND, "unknown service ''")
            health.serving()
            assert {status_of(health.check(request(s))) for s in SERVICES} == {SERVING}
            health.shut_down()
            health.serving()
            assert {status_of(health.check(request(s))) for s in SERVICES} == {NOT_SERVING}

        asyncio.run(run())

    def test_unknown_service_and_garbage(self) -> None:
        async def run() -> None:
            health = Health()
            health.serving()
            assert isinstance(health.check(request("nope")), Status)
            garbage = health.check(b"\xff\xff")
            assert isinstance(garbage, Status) and garbage.code is Code.INVALID_ARGUMENT

        asyncio.run(run())

    def test_watch_sends_each_change(self) -> None:
        """Watch: the current status first (SERVICE_UNKNOWN for an unknown service), then
        each change."""

        async def run() -> list[int]:
            health = Health()
            seen: list[int] = []

            async def watch() -> None:
                async for answer in health.watch(request("")):
                    seen.append(status_of(answer))
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0)
            health.serving()
            await asyncio.sleep(0)
            health.shut_down()
            await asyncio.wait_for(task, 5)
            return seen

        assert asyncio.run(run()) == [SERVICE_UNKNOWN, SERVING, NOT_SERVING]


def test_auto_is_nghttp2_where_it_is_built() -> None:
    """scripts/setup builds the extension, so auto means nghttp2 here; names stay names."""
    assert available()["nghttp2"] is None
    assert resolve("auto") == "nghttp2"
    assert resolve("grpcio") == "grpcio"
