"""A worker killed under load, on a Unix socket: what Envoy's clients see, per transport.

One worker behind Envoy on a Unix socket; 8 client threads send requests for a few seconds;
after one second the worker gets SIGKILL and the supervisor starts another. grpc.aio binds
its own socket, so until the new worker has bound again Envoy's connects are refused; the
nghttp2 transport accepts on a socket the supervisor owns (asm_proxy/listeners.py), so the
connects in between wait in its backlog and are served by the new worker. Requests whose
stream was on the killed worker fail either way.

    python -m perf.worker_kill [--rounds 3]      # results in perf/results/worker_kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.upstream import EchoUpstream
from perf.run import LoopThread

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = """reloadInterval: 0s
logLevel: error
plugins:
  - {name: tag, type: headers, config: {request: {set: {x-asm: '1'}}}}
"""


def one_round(transport: str, workdir: Path, upstream_port: int) -> dict[str, Any]:
    from asm_proxy.supervisor import Supervisor

    config = workdir / "asm-proxy.yaml"
    config.write_text(CONFIG)
    loop = LoopThread()
    supervisor = Supervisor(
        config, listen=f"unix:{workdir}/kill.sock", workers=1, transport=transport
    )
    loop.call(supervisor.start())
    envoy = None
    try:
        setup = Setup(
            asm_proxy=supervisor.addresses,
            clusters={"a": upstream_port},
            routes=[Route("a")],
            ext_proc=ExtProc(message_timeout="1s"),
        )
        envoy = EnvoyProcess(bootstrap(setup), workdir, name="kill-envoy").start()
        statuses: Counter[int] = Counter()
        slowest = [0.0]
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=envoy.url, timeout=10) as client:
                for _ in range(5000):
                    if stop.is_set():
                        return
                    started = time.monotonic()
                    status = client.get("/").status_code
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    statuses[status] += 1

        threads = [threading.Thread(target=traffic) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        victim = supervisor.pids[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while supervisor.pids == [victim] or not supervisor.pids:
            if time.monotonic() - killed_at > 30:
                break
            time.sleep(0.01)
        replaced_after = time.monotonic() - killed_at
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(15)
        return {
            "transport": transport,
            "requests": sum(statuses.values()),
            "failed": sum(n for code, n in statuses.items() if code != 200),
            "statuses": dict(statuses),
            "replaced_after_s": round(replaced_after, 3),
            "slowest_request_s": round(slowest[0], 3),
        }
    finally:
        if envoy is not None:
            envoy.stop()
        try:
            loop.call(supervisor.shutdown(0, 1))
        finally:
            loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.worker_kill")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "worker_kill.json")
    args = parser.parse_args()
    upstream_loop = LoopThread()
    upstream = EchoUpstream("a")
    upstream_loop.call(upstream.start())
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="asm-proxy-kill-") as tmp:
            for n in range(args.rounds):
                for transport in ("grpcio", "nghttp2"):
                    workdir = Path(tmp) / f"{transport}-{n}"
                    workdir.mkdir()
                    row = one_round(transport, workdir, upstream.port)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        upstream_loop.call(upstream.stop())
        upstream_loop.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
