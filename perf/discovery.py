"""What the discovery rewrite costs per answer: `python -m perf.discovery [--quick]`.

For each registry and protocol, one answer with 10 and with 1,000 instances is rewritten
the way the plugin does it on the request path (parse, change every instance, serialise;
for Nacos gRPC also the message reassembly and the protobuf Payload around the JSON; for
Eureka XML the expat scan and in-place edits), and the time per answer taken as the best
of several rounds (the machine is shared: the best round is the least disturbed one).
Results in perf/results/discovery.json; docs/PERFORMANCE.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from asm_proxy_handlers.consul import ConsulPlugin, Query
from asm_proxy_handlers.discovery.grpc_frames import MessageStream, frame
from asm_proxy_handlers.eureka import EurekaPlugin, rewrite_json, rewrite_xml
from asm_proxy_handlers.nacos import rewrite_instances
from asm_proxy_handlers.nacos_grpc import GrpcExchange, NacosGrpcPlugin, _Answers
from tests.support.consul import Registration
from tests.support.eureka import applications_json, applications_xml, instance
from tests.support.nacos import Instance, v1_answer
from tests.support.nacos_grpc import grpc_service_info, payload

RESULTS = Path(__file__).resolve().parent / "results" / "discovery.json"
COUNTS = (10, 1000)


class _Http:
    """The little of `Http` the gRPC rewrite touches (metadata), without a stream."""

    def set_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        pass


def cases(n: int) -> dict[str, Callable[[], object]]:
    pods = [Instance(f"10.{i // 250}.{i % 250}.7", 8080, metadata={"v": "1"}) for i in range(n)]
    nacos_http = v1_answer("DEFAULT_GROUP", "provider", pods)

    grpc_plugin = NacosGrpcPlugin(NacosGrpcPlugin.Config())
    info = grpc_service_info("DEFAULT_GROUP", "provider", pods)
    push = frame(payload("NotifySubscriberRequest", {"serviceInfo": info}).SerializeToString())
    x = GrpcExchange(True, None, namespace="public")
    answers = _Answers(grpc_plugin, x, _Http())  # type: ignore[arg-type]
    chunks = [push[i : i + 16384] for i in range(0, len(push), 16384)]  # Envoy's chunk size

    def nacos_grpc() -> object:
        stream = MessageStream(answers, 1 << 24)
        return [stream.feed(c) for c in chunks]

    registry = {
        "PROVIDER": [instance("provider", f"10.{i // 250}.{i % 250}.7", 8080) for i in range(n)]
    }
    eureka = EurekaPlugin(EurekaPlugin.Config())
    xml, js = applications_xml(registry), applications_json(registry)

    consul = ConsulPlugin(ConsulPlugin.Config())
    health = orjson.dumps(
        [
            Registration(f"n{i}", "10.0.0.1", f"10.{i // 250}.{i % 250}.7", 8080).health(
                "provider", "dc1"
            )
            for i in range(n)
        ]
    )
    query = Query("health", "provider", "", "")
    return {
        "nacos (HTTP JSON)": lambda: rewrite_instances(
            nacos_http, "provider.default.svc.cluster.local"
        ),
        "nacos_grpc (push)": nacos_grpc,
        "eureka (JSON)": lambda: rewrite_json(js, eureka.resolve),
        "eureka (XML)": lambda: rewrite_xml(xml, eureka.resolve),
        "consul (health)": lambda: consul.rewrite(query, health),
    }, {
        "nacos (HTTP JSON)": len(nacos_http),
        "nacos_grpc (push)": len(push),
        "eureka (JSON)": len(js),
        "eureka (XML)": len(xml),
        "consul (health)": len(health),
    }


def best_time(fn: Callable[[], object], budget: float) -> float:
    """Seconds per call: the best of rounds of calls, within `budget` seconds (bounded)."""
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > 0.02 or calls >= 1 << 16:
            break
        calls *= 2
    best, give_up, rounds = float("inf"), time.perf_counter() + budget, 0
    while rounds < 5 or (time.perf_counter() < give_up and rounds < 50):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
        rounds += 1
    return best


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.discovery")
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    budget = 0.05 if args.quick else 1.0
    results: list[dict[str, Any]] = []
    for n in COUNTS:
        run, sizes = cases(n)
        for name, fn in run.items():
            seconds = best_time(fn, budget)
            results.append(
                {"case": name, "instances": n, "bytes": sizes[name], "us": round(seconds * 1e6, 1)}
            )
            print(f"{name:20} {n:5} instances {sizes[name]:8} bytes {seconds * 1e6:10.1f} us")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"quick": args.quick, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
