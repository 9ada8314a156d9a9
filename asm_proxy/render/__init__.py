"""`asm-proxy render`: the Envoy and Istio side of a deployment, derived from the config.

    asm-proxy render --mode sidecar|node|central --target istio|envoy --config FILE [--out DIR]

What Envoy is told (phases, body modes, timeouts, attributes, metadata namespaces, routing,
failure mode) comes from the configured chain (`needs`); how it reaches asm-proxy from the
deployment mode (`placement`); the objects are built as Envoy's typed messages (`envoy`)
and Istio resources (`istio`). Every rendered config is loaded by the real Envoy in the
tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from asm_proxy.loader import Loaded
from asm_proxy.namespaces import load_all
from asm_proxy.render import envoy, istio
from asm_proxy.render.needs import EnvoyNeeds, derive
from asm_proxy.render.placement import ClientTls, Mode, Placement, placement

Target = Literal["istio", "envoy"]


class RenderError(ValueError):
    """The config and the options do not make a deployment (the message says why)."""


@dataclass(frozen=True)
class Options:
    mode: Mode
    target: Target
    workers: int | None = None
    socket: str | None = None
    context: istio.Context = "SIDECAR_INBOUND"
    namespace: str | None = None
    service: str = "asm-proxy"
    service_namespace: str = "asm-proxy"
    port: int | None = None
    #: Central mode: connect to these replicas instead of the Service's name (each still
    #: verified as the Service), e.g. for Envoys outside the cluster.
    addresses: tuple[str, ...] = ()
    client_tls: ClientTls | None = None
    bootstrap: bool = False
    upstream: str = "127.0.0.1:8080"
    listen: str = "0.0.0.0:10000"
    admin: str = "127.0.0.1:9901"


def _placement(loaded: Loaded, options: Options) -> Placement:
    listen = loaded.settings.listen
    tcp_node = options.mode == "node" and options.socket is None and not listen.startswith("unix:")
    if options.mode == "central" or tcp_node:
        # Node mode over TCP reaches the node's own replica through the Service with
        # internalTrafficPolicy: Local (deploy/overlays/node/service.yaml), as central does.
        port = options.port
        if port is None:
            if listen.startswith("unix:"):
                raise RenderError(
                    f"central mode serves TCP, but the config listens on {listen}; "
                    "set listen: 0.0.0.0:PORT (or give --port)"
                )
            port = int(listen.rpartition(":")[2])
        where = placement(
            "central",
            service=options.service,
            service_namespace=options.service_namespace,
            port=port,
            tls=options.client_tls,
            namespace=options.namespace or "",
        )
        if tcp_node:
            if loaded.settings.tls is None:
                raise RenderError(
                    f"node mode over TCP ({listen}) needs `tls:` in the config: on TCP, "
                    "a caller's identity is its client certificate (or use a Unix socket)"
                )
            where = replace(where, mode="node")
        if options.addresses:
            where = replace(where, endpoints=tuple(options.addresses))
        return where
    socket = options.socket
    if socket is None and listen.startswith("unix:"):
        socket = listen[len("unix:") :]
    workers = options.workers or loaded.settings.workers
    if not workers:
        raise RenderError(
            "the config says `workers: 0` (one per core), but Envoy must list one socket "
            "per worker: set workers in the config or give --workers N"
        )
    return placement(
        options.mode, workers=workers, socket=socket, namespace=options.namespace or ""
    )


def render(loaded: Loaded, options: Options) -> dict[str, Any]:
    """The objects to write, by file name."""
    needs: EnvoyNeeds = derive(loaded, shared=options.mode != "sidecar")
    where = _placement(loaded, options)
    if options.target == "istio":
        return dict(
            istio.objects(
                needs, where, loaded, context=options.context, namespace=options.namespace
            )
        )
    if options.bootstrap:
        config = envoy.bootstrap(
            needs, where, upstream=options.upstream, listen=options.listen, admin=options.admin
        )
        return {"envoy.yaml": envoy.as_dict(config)}
    fragment = {
        "http_filters": [envoy.as_dict(f) for f in envoy.filters(needs)],
        "clusters": [envoy.as_dict(envoy.cluster(needs, where))],
    }
    return {"envoy-fragment.yaml": fragment}


def render_file(
    config: str | Path, options: Options, namespace_dir: str | Path | None = None
) -> dict[str, Any]:
    """Render for `config` with its namespace files (from `namespace_dir` if given): what
    Envoy is told covers the union of every namespace's plugins."""
    return render(load_all(config, namespace_dir), options)


def dump(objects: dict[str, Any]) -> str:
    """All objects as one YAML stream, each headed by the file it would be written to."""
    parts = [f"# {name}\n" + yaml.safe_dump(obj, sort_keys=False) for name, obj in objects.items()]
    return "---\n".join(parts)


def write(objects: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, obj in objects.items():
        path = out / name
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        written.append(path)
    return written


__all__ = ["Options", "RenderError", "Target", "dump", "render", "render_file", "write"]
