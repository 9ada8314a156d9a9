"""`asm-proxy serve | validate | render | diagnose | health | demo | plugins`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from asm_proxy.config import ConfigError, read_config_text
from asm_proxy.transport import NAMES


def _setup_logging(level: str = "info") -> None:
    from asm_proxy.logs import setup

    # serve sets the config's format and level once it has read the file.
    setup("auto", level)


def _validate(paths: list[str], namespace: str | None, root: str, directory: str | None) -> int:
    """Main configs with their namespace files; or, with `namespace`, namespace files."""
    from asm_proxy.namespaces import check_file, load_all

    status = 0
    for path in paths:
        try:
            if namespace is not None:
                entries = check_file(Path(path), namespace, read_config_text(path), root=root)
                names = ", ".join(f"{e['name']} ({e['type']})" for e in entries)
                print(f"{path}: ok, {len(entries)} plugin(s) for namespace {namespace}: {names}")
                continue
            loaded = load_all(path, directory)
        except ConfigError as exc:
            status = 1
            print(exc, file=sys.stderr)  # its problems, one per line
            continue
        for warning in loaded.warnings:
            print(warning, file=sys.stderr)
        names = ", ".join(f"{e.name} ({e.type_name})" for e in loaded.chain.entries)
        print(f"{path}: ok, {len(loaded.chain.entries)} plugin(s){': ' + names if names else ''}")
    return status


def _serve(
    config: str,
    listen: str | None,
    workers: int | None,
    admin: str | None,
    transport: str | None,
) -> int:
    from asm_proxy.supervisor import supervise

    try:
        asyncio.run(supervise(config, listen, workers, admin, transport))
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # its problems, one per line
        return 1
    except OSError as exc:
        print(f"asm-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _render(args: argparse.Namespace) -> int:

    try:
        from asm_proxy.render import Options, RenderError, dump, render_file, write
        from asm_proxy.render.placement import ClientTls
    except ImportError as exc:
        print(
            f"asm-proxy render: {exc.name} is missing: pip install 'asm-proxy[render]'",
            file=sys.stderr,
        )
        return 2

    tls = None
    if args.client_cert or args.client_key or args.client_ca:
        tls = ClientTls(
            cert=args.client_cert or ClientTls.cert,
            key=args.client_key or ClientTls.key,
            ca=args.client_ca or ClientTls.ca,
        )
    options = Options(
        mode=args.mode,
        target=args.target,
        workers=args.workers,
        socket=args.socket,
        context=args.context,
        namespace=args.namespace,
        service=args.service,
        service_namespace=args.service_namespace,
        port=args.port,
        addresses=tuple(args.address),
        client_tls=tls,
        bootstrap=args.bootstrap,
        upstream=args.upstream,
        listen=args.envoy_listen,
        admin=args.admin,
    )
    try:
        objects = render_file(args.config, options, args.namespace_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # its problems, one per line
        return 1
    except RenderError as exc:
        print(f"asm-proxy render: {exc}", file=sys.stderr)
        return 1
    if args.out:
        for path in write(objects, Path(args.out)):
            print(path)
    else:
        sys.stdout.write(dump(objects))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from asm_proxy.diagnose import (
        diagnose,
        format_json,
        format_text,
        read_envoy_admin,
        read_envoy_files,
        worst,
    )

    envoy = None
    try:
        if args.envoy_admin:
            envoy = read_envoy_admin(args.envoy_admin)
        elif args.envoy_config:
            envoy = read_envoy_files(args.envoy_config)
        findings = diagnose(args.config, envoy, args.namespace_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # its problems, one per line
        return 2
    except OSError as exc:
        print(f"asm-proxy diagnose: {exc}", file=sys.stderr)
        return 2
    out = format_json(findings) if args.format == "json" else format_text(findings)
    sys.stdout.write(out)
    return worst(findings)


def _health(address: str, service: str, timeout: float) -> int:
    """Exit 0 if asm-proxy at `address` says SERVING (for exec probes on a Unix socket)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as exc:
        print(f"asm-proxy health: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _plugins() -> int:
    from asm_proxy.registry import installed_types

    for name, target in sorted(installed_types().items()):
        print(f"{name:20} {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asm-proxy", description="Envoy ext_proc / ext_authz server with Python plugins"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve ext_proc, ext_authz and health over gRPC")
    p_serve.add_argument("--config", "-c", required=True, help="the YAML config file")
    p_serve.add_argument("--listen", help="HOST:PORT or unix:/path (overrides the file)")
    p_serve.add_argument(
        "--transport",
        choices=("auto", *NAMES),
        help="how calls are served: nghttp2, grpcio (grpc.aio) or auto (overrides the file)",
    )
    p_serve.add_argument(
        "--workers",
        type=_positive,
        help="worker processes (overrides the file; default: one per core). With a Unix "
        "socket and more than one worker, worker i listens on PATH.i",
    )
    p_serve.add_argument(
        "--admin",
        help="HOST:PORT of the HTTP admin endpoint (/metrics /healthz /readyz /config_dump "
        "/plugins; overrides the file's admin.listen; loopback unless the file allows more)",
    )
    p_validate = sub.add_parser("validate", help="check config files; exit 1 if any is bad")
    p_validate.add_argument("files", nargs="+")
    p_validate.add_argument(
        "--namespace-dir",
        help="the namespace files' directory (stands for the config's namespaces.directory)",
    )

    p_validate.add_argument(
        "--namespace",
        help="the files are this namespace's plugin files (namespaces.directory), not configs",
    )
    p_validate.add_argument(
        "--root-namespace", default="istio-system", help="with --namespace: the root namespace"
    )
    p_render = sub.add_parser(
        "render", help="print (or write) the Envoy / Istio side of a deployment of the config"
    )
    p_render.add_argument("--mode", required=True, choices=["sidecar", "node", "central"])
    p_render.add_argument("--target", required=True, choices=["istio", "envoy"])
    p_render.add_argument("--config", "-c", required=True, help="the asm-proxy config file")
    p_render.add_argument("--out", help="write one file per object into this directory")
    p_render.add_argument(
        "--namespace-dir",
        help="the namespace files' directory (stands for the config's namespaces.directory)",
    )

    p_render.add_argument(
        "--bootstrap", action="store_true", help="envoy target: a complete Envoy config"
    )
    p_render.add_argument("--upstream", default="127.0.0.1:8080", help="--bootstrap: HOST:PORT")
    p_render.add_argument("--envoy-listen", default="0.0.0.0:10000", help="--bootstrap listener")
    p_render.add_argument("--admin", default="127.0.0.1:9901", help="--bootstrap admin address")
    p_render.add_argument(
        "--context",
        default="SIDECAR_INBOUND",
        choices=["SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"],
        help="istio: the listener context the filters go into",
    )
    p_render.add_argument("--namespace", help="istio: the namespace of the EnvoyFilter")
    p_render.add_argument("--socket", help="sidecar/node: the socket path (default: the config's)")
    p_render.add_argument("--workers", type=_positive, help="sidecar/node: sockets to list")
    p_render.add_argument("--service", default="asm-proxy", help="central: the Service's name")
    p_render.add_argument("--service-namespace", default="asm-proxy", help="central: its namespace")
    p_render.add_argument("--port", type=int, help="central: the Service's port")
    p_render.add_argument(
        "--address",
        action="append",
        default=[],
        help="central: HOST:PORT of a replica to connect to, repeatable (each is still "
        "verified as the Service)",
    )
    p_render.add_argument("--client-cert", help="central, envoy: Envoy's client certificate")
    p_render.add_argument("--client-key", help="central, envoy: its private key")
    p_render.add_argument("--client-ca", help="central, envoy: the CA of asm-proxy's certificate")
    p_diagnose = sub.add_parser(
        "diagnose", help="find mistakes in a config and in the Envoy config that calls it"
    )
    p_diagnose.add_argument("--config", "-c", required=True, help="the asm-proxy config file")
    source = p_diagnose.add_mutually_exclusive_group()
    source.add_argument(
        "--envoy-config", nargs="+", help="Envoy config files (bootstrap, render's output)"
    )
    source.add_argument("--envoy-admin", help="a running Envoy's admin URL (its /config_dump)")
    p_diagnose.add_argument("--format", choices=["text", "json"], default="text")
    p_diagnose.add_argument(
        "--namespace-dir",
        help="the namespace files' directory (stands for the config's namespaces.directory)",
    )

    p_health = sub.add_parser("health", help="gRPC health check (exit 0 when SERVING)")
    p_health.add_argument("address", help="HOST:PORT or unix:/path")
    p_health.add_argument("--service", default="", help="the health service name (default: all)")
    p_health.add_argument("--timeout", type=float, default=2.0)
    p_demo = sub.add_parser("demo", help="run Envoy + asm-proxy + an echo upstream locally")
    p_demo.add_argument("--port", type=int, default=10000, help="Envoy's port (default 10000)")
    p_demo.add_argument("--check", action="store_true", help="send the demo requests, then exit")
    sub.add_parser("plugins", help="list the plugin types that can be used by name")
    args = parser.parse_args(argv)

    if args.command == "validate":
        return _validate(args.files, args.namespace, args.root_namespace, args.namespace_dir)
    if args.command == "plugins":
        return _plugins()
    if args.command == "render":
        return _render(args)
    if args.command == "diagnose":
        return _diagnose(args)
    if args.command == "health":
        return _health(args.address, args.service, args.timeout)
    _setup_logging()
    if args.command == "serve":
        return _serve(args.config, args.listen, args.workers, args.admin, args.transport)
    if args.command == "demo":
        try:
            from asm_proxy.demo import run_demo
        except ImportError as exc:
            print(
                f"asm-proxy demo: {exc.name} is missing; the demo needs the demo extra and "
                "the built-in plugins: pip install 'asm-proxy[demo]' asm-proxy-handlers "
                "(scripts/demo does this)",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("asm_proxy").setLevel(logging.WARNING)
        return asyncio.run(run_demo(args.port, args.check))
    parser.error(f"unknown command {args.command}")
