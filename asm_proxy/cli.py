"""`asm-proxy serve | validate | demo | plugins`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from asm_proxy.config import ConfigError


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _validate(paths: list[str]) -> int:
    from asm_proxy.loader import load

    status = 0
    for path in paths:
        try:
            loaded = load(path)
        except ConfigError as exc:
            status = 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        for warning in loaded.warnings:
            print(warning, file=sys.stderr)
        names = ", ".join(f"{e.name} ({e.type_name})" for e in loaded.chain.entries)
        print(f"{path}: ok, {len(loaded.chain.entries)} plugin(s){': ' + names if names else ''}")
    return status


def _serve(config: str, listen: str | None, workers: int | None) -> int:
    from asm_proxy.supervisor import supervise

    try:
        asyncio.run(supervise(config, listen, workers))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"asm-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


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
        "--workers",
        type=_positive,
        help="worker processes (overrides the file; default: one per core). With a Unix "
        "socket and more than one worker, worker i listens on PATH.i",
    )
    p_validate = sub.add_parser("validate", help="check config files; exit 1 if any is bad")
    p_validate.add_argument("files", nargs="+")
    p_demo = sub.add_parser("demo", help="run Envoy + asm-proxy + an echo upstream locally")
    p_demo.add_argument("--port", type=int, default=10000, help="Envoy's port (default 10000)")
    p_demo.add_argument("--check", action="store_true", help="send the demo requests, then exit")
    sub.add_parser("plugins", help="list the plugin types that can be used by name")
    args = parser.parse_args(argv)

    if args.command == "validate":
        return _validate(args.files)
    if args.command == "plugins":
        return _plugins()
    _setup_logging()
    if args.command == "serve":
        return _serve(args.config, args.listen, args.workers)
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
