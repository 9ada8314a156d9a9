"""Envoy bootstraps as `asm-proxy render` makes them, and the few places tests reach into
one (its HTTP connection manager, a filter, the routes), so that what Envoy runs is what
users are told to run, changed only where a test says so."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asm_proxy.render import Options, render_file
from asm_proxy.render.placement import ClientTls, Mode


def rendered_bootstrap(
    config: Path,
    upstream_port: int,
    *,
    mode: Mode = "sidecar",
    addresses: Sequence[str] = (),
    client_tls: ClientTls | None = None,
) -> dict[str, Any]:
    """`render --mode MODE --target envoy --bootstrap` for `config`: the upstream on
    127.0.0.1, Envoy's listener and admin on ephemeral ports. Sidecar and node mode reach
    asm-proxy on the config's Unix socket; central mode at `addresses`, each verified
    with `client_tls` (central mode is always mTLS)."""
    rendered: dict[str, Any] = render_file(
        config,
        Options(
            mode=mode,
            target="envoy",
            bootstrap=True,
            addresses=tuple(addresses),
            client_tls=client_tls,
            upstream=f"127.0.0.1:{upstream_port}",
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
        ),
    )["envoy.yaml"]
    return rendered


def connection_manager(boot: dict[str, Any]) -> dict[str, Any]:
    """The HTTP connection manager of the bootstrap's (first) listener."""
    listener = boot["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def http_filter(boot: dict[str, Any], name: str) -> dict[str, Any]:
    """The typed_config of the HTTP filter `name` (e.g. envoy.filters.http.ext_proc)."""
    for entry in connection_manager(boot)["http_filters"]:
        if entry["name"] == name:
            config: dict[str, Any] = entry["typed_config"]
            return config
    raise KeyError(name)


def add_request_headers(boot: dict[str, Any], headers: dict[str, str]) -> None:
    """Have Envoy's routes add these request headers upstream (values may use Envoy's
    %...% formatters, e.g. %DYNAMIC_METADATA(ns:key)%; an empty value is left out)."""
    for vhost in connection_manager(boot)["route_config"]["virtual_hosts"]:
        vhost["request_headers_to_add"] = [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in headers.items()
        ]
