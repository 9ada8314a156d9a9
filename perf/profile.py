"""Profile asm-proxy's per-request path under load: `python -m perf.profile SCENARIO`.

Starts the scenario's stack (one worker), loads it with wrk, and samples the worker with
py-spy (`pip install py-spy`; it needs ptrace rights, e.g. root) for the middle of the run.
Writes the samples in collapsed form (one stack a line, for flame graphs) and prints the
functions where the worker spent its time, own time first.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from asm_proxy.envoy_process import EnvoyProcess
from perf.envoys import proxy_config, start_upstream
from perf.load import run_wrk
from perf.run import AsmProxyServer
from perf.scenarios import find


def summarize(collapsed: Path, top: int = 30) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {n / samples * 100:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {n / samples * 100:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.profile")
    parser.add_argument("scenario", nargs="?", default="headers-every-phase")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--transport", choices=["nghttp2", "grpcio"], default="nghttp2")
    parser.add_argument("--out", type=Path, help="default: perf/results/profile-SCENARIO.txt")
    args = parser.parse_args()
    out: Path = args.out or Path(__file__).parent / "results" / f"profile-{args.scenario}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    scenario = find(args.scenario)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        upstream = start_upstream(work)
        config = work / "asm-proxy.yaml"
        config.write_text(scenario.config)
        server = AsmProxyServer(config, f"unix:{work}/asm.sock", 1, args.transport)
        envoy = EnvoyProcess(
            proxy_config(upstream.port, server.endpoints, scenario.ext_proc, scenario.ext_authz),
            work,
            name="proxy",
            concurrency=2,
        ).start()
        raw = work / "profile.collapsed"
        try:
            load = threading.Thread(
                target=run_wrk,
                args=(envoy.url, scenario.shape),
                kwargs={"connections": 16, "threads": 2, "seconds": args.seconds, "workdir": work},
            )
            load.start()
            cmd = [
                spy,
                "record",
                "--pid",
                str(server.roots[0]),
                "--duration",
                str(max(1, int(args.seconds) - 3)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ]
            if args.native:
                cmd.append("--native")
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
            load.join()
        finally:
            envoy.stop()
            server.stop()
            upstream.stop()
        text = summarize(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"scenario: {scenario.name}\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
