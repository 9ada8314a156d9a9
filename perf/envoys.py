"""The two Envoys of a benchmark: the proxy under test, and a second Envoy as the upstream.

The upstream is an Envoy listener that answers every request itself (`direct_response`),
after reading the whole request body (the buffer filter; answering before the body is in
would make Envoy close HTTP/1.1 connections). It is a real HTTP server on its own port, in
its own process, so the proxy does all the work of proxying, and it is C++: it costs a few
tens of microseconds a request, far less than anything measured here. A Python upstream
would compete for the same two cores with a cost close to the thing being measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asm_proxy.envoy_bootstrap import ExtAuthz, ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess

#: Bodies up to this size pass (the scale sweep goes to 4 MiB; BUFFERED needs it whole).
BUFFER_LIMIT = 16 * 1024 * 1024

NACOS_PATH = "/nacos/v1/ns/instance/list"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def nacos_answer(instances: int = 4) -> str:
    """A Nacos v1 instance list as Nacos returns it (about 1 KiB for 4 instances)."""
    import orjson

    hosts = [
        {
            "instanceId": f"10.0.{i}.{10 + i}#8080#DEFAULT#DEFAULT_GROUP@@provider",
            "ip": f"10.0.{i}.{10 + i}",
            "port": 8080,
            "weight": 1.0,
            "healthy": True,
            "enabled": True,
            "ephemeral": True,
            "clusterName": "DEFAULT",
            "serviceName": "DEFAULT_GROUP@@provider",
            "metadata": {"preserved.register.source": "SPRING_CLOUD", "zone": f"z{i}"},
        }
        for i in range(instances)
    ]
    doc = {
        "name": "DEFAULT_GROUP@@provider",
        "groupName": "DEFAULT_GROUP",
        "clusters": "",
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": 1732233600000,
        "checksum": "6b3a7f0a6f1e4c1d",
        "allIPs": False,
        "reachProtectionThreshold": False,
        "valid": True,
    }
    return orjson.dumps(doc).decode()


def upstream_config() -> dict[str, Any]:
    def answer(prefix: str, body: str, content_type: str) -> dict[str, Any]:
        return {
            "match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": body}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": content_type}, "append_action": 2}
            ],
        }

    hcm = {
        "@type": _HCM,
        "stat_prefix": "upstream",
        "codec_type": "AUTO",
        "route_config": {
            "name": "answers",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        answer(NACOS_PATH, nacos_answer(), "application/json"),
                        answer("/", '{"ok":true}\n', "application/json"),
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": BUFFER_LIMIT,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def start_upstream(workdir: Path) -> EnvoyProcess:
    return EnvoyProcess(upstream_config(), workdir, name="upstream", concurrency=1).start()


def proxy_config(
    upstream_port: int,
    ext_proc_address: str | list[str] | None,
    ext_proc: ExtProc | None,
    ext_authz: ExtAuthz | None,
    max_streams: int | None = None,
) -> dict[str, Any]:
    """The Envoy under test: the project's own bootstrap, with buffer limits raised so the
    largest bodies of the sweep pass."""
    setup = Setup(
        asm_proxy=ext_proc_address or "127.0.0.1:1",
        clusters={"upstream": upstream_port},
        routes=[Route("upstream")],
        ext_proc=ext_proc if ext_proc_address else None,
        ext_authz=ext_authz if ext_proc_address else None,
        asm_proxy_max_streams=max_streams,
    )
    config = bootstrap(setup)
    resources = config["static_resources"]
    for listener in resources["listeners"]:
        listener["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT
    for cluster in resources["clusters"]:
        cluster["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT
    return config
