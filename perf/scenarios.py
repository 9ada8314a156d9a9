"""What the benchmark runs: request shapes, Envoy configs and asm-proxy configs.

A scenario whose plugin type is not installed, or whose config the plugin refuses, is
reported as skipped with the reason, never failed; the configs follow docs/plugins/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from asm_proxy.envoy_bootstrap import ExtAuthz, ExtProc
from perf.envoys import NACOS_PATH
from perf.load import Shape

KiB = 1024
MiB = 1024 * KiB

POST_1K = Shape("post-1k", "POST", "/api/items", 1 * KiB, "application/json")
NACOS = Shape(
    "nacos-get",
    "GET",
    NACOS_PATH + "?serviceName=DEFAULT_GROUP%40%40provider&namespaceId=public&clusters=",
)
POST_1M = Shape("post-1m", "POST", "/upload", 1 * MiB, "text/plain")

#: Settings every asm-proxy config of the benchmark shares: no file watching, quiet logs,
#: a deadline that load cannot push a healthy request past.
COMMON = "reloadInterval: 0s\nlogLevel: warning\ndeadline: 1500ms\n"

#: Envoy waits this long for an answer before giving up on a message.
MESSAGE_TIMEOUT = "2s"


@dataclass
class Scenario:
    name: str
    title: str
    shape: Shape
    server: str  # "envoy" (no ext_proc), "floor", "asm-proxy"
    config: str = ""
    ext_proc: ExtProc | None = None
    ext_authz: ExtAuthz | None = None
    needs: tuple[str, ...] = ()  # plugin types that must be installed
    workers: int | None = None
    group: str = "main"  # main, body, chain, workers, observability
    x: float | None = None  # the sweep's variable
    #: asm-proxy's transport (asm_proxy/transport/); scenarios of the other transports are
    #: named NAME@TRANSPORT.
    transport: str = "grpcio"
    #: Only this transport can serve it (ext_authz over HTTP: nghttp2).
    pinned: bool = False
    #: Environment of the asm-proxy processes (OTEL_* for the tracing scenarios).
    env: dict[str, str] = field(default_factory=dict)


def on_transport(scenario: Scenario, transport: str) -> Scenario:
    """The same scenario served over another transport."""
    if scenario.server != "asm-proxy" or transport == scenario.transport or scenario.pinned:
        return scenario
    return replace(
        scenario,
        name=f"{scenario.name}@{transport}",
        title=f"{scenario.title} [{transport}]",
        transport=transport,
    )


def on_demand() -> ExtProc:
    """Envoy configured to send request and response headers, and to let asm-proxy
    skip what no plugin needs (allow_mode_override)."""
    return ExtProc(message_timeout=MESSAGE_TIMEOUT)


def every_phase() -> ExtProc:
    """The same, with no override: Envoy sends request and response headers every time."""
    return ExtProc(message_timeout=MESSAGE_TIMEOUT, allow_mode_override=False)


HEADERS_ONE = (
    COMMON
    + """plugins:
  - {name: tag, type: headers, config: {request: {set: {x-asm: '1'}}}}
"""
)


def chain(length: int) -> str:
    """`length` plugins of which only the last matches this benchmark's requests."""
    lines = [COMMON + "plugins:"]
    for i in range(length - 1):
        lines.append(
            f"  - {{name: other-{i}, type: headers, match: [{{paths: [{{prefix: /other-{i}/}}]}}], "
            f"config: {{request: {{set: {{x-other-{i}: '1'}}}}}}}}"
        )
    lines.append(
        "  - {name: tag, type: headers, match: [{paths: [{prefix: /api/}]}], "
        "config: {request: {set: {x-asm: '1'}}}}"
    )
    return "\n".join(lines) + "\n"


NACOS_CONFIG = (
    COMMON
    + """plugins:
  - name: nacos
    type: nacos
    failStrategy: FAIL_OPEN
    config: {hostTemplate: "{service}.{namespace}.svc.cluster.local"}
"""
)

BODY_LOG_CONFIG = (
    COMMON
    + """plugins:
  - name: body-log
    type: body_log
    failStrategy: FAIL_OPEN
    config: {request: true, response: false, maxBytes: 4096, contentTypes: [text/plain]}
"""
)

WHOLE_BODY = (
    COMMON
    + """plugins:
  - {name: whole-body, type: 'perf.plugins:WholeBody'}
"""
)


@cache
def jwt_material() -> tuple[dict[str, Any], str]:
    """An RS256 key as an inline JWKS, and a token it signed (valid for a day)."""
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "RS256", "use": "sig"})
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "https://issuer.bench.local",
            "aud": "bench",
            "sub": "user-1",
            "iat": now,
            "exp": now + 86400,
        },
        key,
        algorithm="RS256",
        headers={"kid": "bench"},
    )
    return {"keys": [jwk]}, token


#: The JWT scenarios, and the provider's verifiedCacheSize in each: the load repeats one
#: token, so the cached one is the cache's best case and the uncached one its worst.
JWT_CACHE_SIZES = {"jwt-authz": 100, "jwt-authz-uncached": 0, "jwt-authz-http": 100}


def jwt_scenario(name: str, title: str, http: bool = False) -> Scenario:
    shape = Shape("get-jwt", "GET", "/api/items", headers=(("authorization", "Bearer {token}"),))
    return Scenario(
        name,
        title,
        shape,
        "asm-proxy",
        config="",  # filled by `materialize` once `auth` is known to be installed
        ext_authz=ExtAuthz(timeout="2s", http_prefix="/ext_authz" if http else None),
        needs=("auth",),
        transport="nghttp2" if http else "grpcio",
        pinned=http,
    )


def materialize(scenario: Scenario) -> Scenario:
    """Fill in what needs a plugin's dependencies (the JWT scenarios' key and token)."""
    if scenario.name not in JWT_CACHE_SIZES or scenario.config:
        return scenario
    import orjson

    jwks, token = jwt_material()
    config = COMMON + (
        "plugins:\n"
        "  - name: jwt\n"
        "    type: auth\n"
        "    phase: AUTHN\n"
        "    config:\n"
        "      jwt:\n"
        "        providers:\n"
        "          - name: bench\n"
        "            issuer: https://issuer.bench.local\n"
        "            audiences: [bench]\n"
        "            algorithms: [RS256]\n"
        f"            jwks: {orjson.dumps(jwks).decode()}\n"
        f"            verifiedCacheSize: {JWT_CACHE_SIZES[scenario.name]}\n"
        "      rules: [{credentials: [jwt]}]\n"
    )
    shape = Shape(
        scenario.shape.name,
        scenario.shape.method,
        scenario.shape.path,
        headers=(("authorization", f"Bearer {token}"),),
    )
    scenario.config, scenario.shape = config, shape
    return scenario


def envoy_alone(shape: Shape) -> Scenario:
    return Scenario(f"envoy-alone:{shape.name}", f"Envoy alone ({shape.name})", shape, "envoy")


def main_scenarios() -> list[Scenario]:
    body_log_ext_proc = ExtProc(
        message_timeout=MESSAGE_TIMEOUT,
        request_body_mode="STREAMED",
        response_header_mode="SKIP",
        allow_mode_override=False,
    )
    return [
        Scenario(
            "floor", "bare grpc.aio floor (every phase)", POST_1K, "floor", ext_proc=every_phase()
        ),
        Scenario(
            "floor-h2",
            "bare pure-Python h2 server (every phase)",
            POST_1K,
            "floor",
            config="h2",
            ext_proc=every_phase(),
            group="floors",
        ),
        Scenario(
            "floor-nghttp2",
            "bare nghttp2 C session, no framework (every phase)",
            POST_1K,
            "floor",
            config="nghttp2",
            ext_proc=every_phase(),
            group="floors",
        ),
        Scenario(
            "headers-every-phase",
            "1 plugin, headers, Envoy sends every phase",
            POST_1K,
            "asm-proxy",
            config=HEADERS_ONE.replace(COMMON, COMMON + "modeOverride: false\n"),
            ext_proc=every_phase(),
        ),
        Scenario(
            "headers-on-demand",
            "1 plugin, headers, phases on demand",
            POST_1K,
            "asm-proxy",
            config=HEADERS_ONE,
            ext_proc=on_demand(),
        ),
        Scenario(
            "chain-10-1-match",
            "10 plugins, 9 do not match",
            POST_1K,
            "asm-proxy",
            config=chain(10),
            ext_proc=on_demand(),
        ),
        Scenario(
            "nacos-buffered-1k",
            "nacos rewrite, BUFFERED 1 KiB JSON answer",
            NACOS,
            "asm-proxy",
            config=NACOS_CONFIG,
            ext_proc=on_demand(),
            needs=("nacos",),
        ),
        Scenario(
            "body-log-streamed-1m",
            "body_log, STREAMED 1 MiB request body",
            POST_1M,
            "asm-proxy",
            config=BODY_LOG_CONFIG,
            ext_proc=body_log_ext_proc,
            needs=("body_log",),
        ),
        jwt_scenario("jwt-authz", "JWT RS256 via ext_authz (one token, remembered)"),
        jwt_scenario("jwt-authz-uncached", "JWT RS256 via ext_authz, every token verified"),
        jwt_scenario(
            "jwt-authz-http", "JWT RS256 via ext_authz over HTTP/1.1 (remembered)", http=True
        ),
    ]


def body_sweep(sizes: list[int]) -> list[Scenario]:
    out = []
    for size in sizes:
        shape = Shape(f"post-{size}", "POST", "/api/body", size, "application/octet-stream")
        out.append(
            Scenario(
                f"body-{size}",
                f"whole-body plugin, BUFFERED, {size} bytes",
                shape,
                "asm-proxy",
                config=WHOLE_BODY,
                ext_proc=on_demand(),
                group="body",
                x=size,
            )
        )
    return out


def chain_sweep(lengths: list[int]) -> list[Scenario]:
    return [
        Scenario(
            f"chain-{n}",
            f"{n} plugins, 1 matches",
            POST_1K,
            "asm-proxy",
            config=chain(n),
            ext_proc=on_demand(),
            group="chain",
            x=n,
        )
        for n in lengths
    ]


def worker_sweep(counts: list[int]) -> list[Scenario]:
    return [
        Scenario(
            f"workers-{n}",
            f"1 plugin, phases on demand, {n} worker(s)",
            POST_1K,
            "asm-proxy",
            config=HEADERS_ONE,
            ext_proc=on_demand(),
            workers=n,
            group="workers",
            x=n,
        )
        for n in counts
    ]


def find(name: str) -> Scenario:
    """A scenario of the main set or of a sweep, by name."""
    every = main_scenarios() + body_sweep([1 * KiB, 64 * KiB, 1 * MiB]) + chain_sweep([1, 10, 20])
    for scenario in every:
        if scenario.name == name:
            return materialize(scenario)
    raise KeyError(f"no scenario {name!r}; known: {', '.join(s.name for s in every)}")
