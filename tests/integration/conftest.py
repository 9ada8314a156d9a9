"""Real Envoy in front of echo upstreams, with asm-proxy as its ext_proc / ext_authz server.

Everything listens on 127.0.0.1 with ephemeral ports; readiness is polled. A missing or
broken Envoy makes these tests fail, never skip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from asm_proxy.envoy_bootstrap import ExtAuthz, ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from tests.support.background import ServerThread, Upstreams

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="session")
def upstreams() -> Iterator[Upstreams]:
    ups = Upstreams("a", "b")
    yield ups
    ups.stop()


@dataclass
class Stack:
    envoy: EnvoyProcess
    server: ServerThread
    upstreams: Upstreams
    access_log: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.envoy.url, timeout=10)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def seen(self, upstream: str = "a") -> Any:
        """The last request the named upstream received."""
        return self.upstreams[upstream].requests[-1]

    def log_entries(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until the access log has `count` lines; return them parsed."""
        give_up = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < give_up:
            if self.access_log.exists():
                lines = [ln for ln in self.access_log.read_text().splitlines() if ln.strip()]
                if len(lines) >= count:
                    return [json.loads(ln) for ln in lines]
            time.sleep(0.05)
        raise AssertionError(f"access log has {len(lines)} lines, expected {count}")

    def metric(self, name: str, **labels: str) -> float:
        """A metric of this stack's plugins (and their hooks), summed over the series with
        these labels."""
        return self.server.metrics.value(name, labels)

    def plugin(self, name: str) -> Any:
        for entry in self.server.server.chain.entries:
            if entry.name == name:
                return entry.plugin
        raise KeyError(name)

    def close(self) -> None:
        self.client.close()
        self.envoy.stop()
        self.server.stop()


StackFactory = Callable[..., Stack]


@pytest.fixture(params=["grpc", "http"])
def over(request: pytest.FixtureRequest, transport: str) -> ExtAuthz:
    """ext_authz over gRPC, and over plain HTTP (the nghttp2 transport's http_service)."""
    if request.param == "http":
        if transport != "nghttp2":
            pytest.skip("ext_authz over HTTP is served by the nghttp2 transport")
        return ExtAuthz(http_prefix="/ext_authz")
    return ExtAuthz()


@pytest.fixture
def stack(tmp_path: Path, upstreams: Upstreams, transport: str) -> Iterator[StackFactory]:
    """stack(config_yaml, ext_proc=ExtProc(...), ext_authz=None, routes=None, ...) -> Stack

    `clusters` adds upstreams of the test's own ({name: port on 127.0.0.1}) to the echo
    upstreams a and b; `access_log_keys` adds metadata keys the access log prints as
    `md_<key>`; `grpc_clusters` names those of them that speak gRPC (HTTP/2)."""
    made: list[Stack] = []

    def make(
        config: str,
        *,
        ext_proc: ExtProc | None = None,
        ext_authz: ExtAuthz | None = None,
        routes: list[Route] | None = None,
        node_metadata: dict[str, Any] | None = None,
        listen: str = "127.0.0.1:0",
        use_ext_proc: bool = True,
        clusters: dict[str, int] | None = None,
        access_log_keys: tuple[str, ...] = (),
        grpc_clusters: tuple[str, ...] = (),
    ) -> Stack:
        n = len(made)
        config_path = tmp_path / f"asm-proxy-{n}.yaml"
        config_path.write_text(config)
        server = ServerThread(config_path, listen=listen, transport=transport)
        access_log = tmp_path / f"access-{n}.log"
        setup = Setup(
            asm_proxy=server.address,
            clusters={**upstreams.ports, **(clusters or {})},
            routes=routes or [Route("a")],
            ext_proc=(ext_proc or ExtProc()) if use_ext_proc else None,
            ext_authz=ext_authz,
            access_log=str(access_log),
            access_log_keys=(
                "user",
                "from_header",
                "request_body_seen",
                "response_body_seen",
                *access_log_keys,
            ),
            node_metadata=node_metadata or {},
            grpc_clusters=grpc_clusters,
        )
        config_dict = bootstrap(setup)
        try:
            envoy = EnvoyProcess(config_dict, tmp_path, name=f"envoy-{n}").start()
        except Exception:
            server.stop()
            raise
        s = Stack(envoy, server, upstreams, access_log)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
