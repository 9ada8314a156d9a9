"""`asm-proxy demo`: a real Envoy, asm-proxy and an echo upstream on loopback.

Everything binds to 127.0.0.1; Envoy listens on --port (10000 by default), the rest on
ephemeral ports. The config is copied to a scratch directory and watched, so editing it
shows hot reload. `--check` sends the demo requests itself, prints what came back and
exits non-zero if a plugin did not do its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.loader import load
from asm_proxy.server import Server
from asm_proxy.upstream import EchoUpstream


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read().decode()


def _check(base: str) -> list[str]:
    """Send the demo's requests; return what did not behave."""
    failures = []
    status, headers, body = _fetch(f"{base}/api/hello", {"x-debug": "1"})
    print(f"GET /api/hello -> {status}, x-served-by: {headers.get('x-served-by')}")
    print(body)
    if status != 200 or '"x-tenant": "blue"' not in body or '"x-debug"' in body:
        failures.append("tenant-header did not set x-tenant / remove x-debug on the request")
    if headers.get("x-served-by") != "asm-proxy":
        failures.append("tenant-header did not set x-served-by on the response")
    status, _, body = _fetch(f"{base}/v1/users", {})
    print(f"GET /v1/users -> {status}: {body.strip()}")
    if status != 410:
        failures.append("retired-v1 did not answer 410")
    status, headers, _ = _fetch(f"{base}/other", {"x-debug": "1"})
    print(f"GET /other -> {status}, x-served-by: {headers.get('x-served-by')}")
    if status != 200 or headers.get("x-served-by"):
        failures.append("a request outside /api was changed")
    return failures


async def run_demo(port: int = 10000, check: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="asm-proxy-demo-"))
    config_path = workdir / "config.yaml"
    config_path.write_text(resources.files("asm_proxy.demo").joinpath("config.yaml").read_text())
    upstream = EchoUpstream("echo")
    await upstream.start()
    server = Server(load(config_path), config_path=config_path)
    await server.start("127.0.0.1:0")
    setup = Setup(
        asm_proxy=server.address,
        clusters={"echo": upstream.port},
        routes=[Route("echo")],
        ext_proc=ExtProc(),
        access_log=str(workdir / "access.log"),
        listen_port=port,
    )
    envoy = EnvoyProcess(bootstrap(setup), workdir)
    try:
        await asyncio.to_thread(envoy.start)
        base = envoy.url
        print(f"""
asm-proxy demo is up:
  Envoy      {base}   (admin http://{envoy.admin})
  asm-proxy  {server.address}   config {config_path} (edit it: it reloads)
  upstream   127.0.0.1:{upstream.port}   echoes the request it got as JSON

Try:
  curl -s {base}/api/hello -H 'x-debug: 1'      # upstream sees x-tenant: blue, no x-debug
  curl -si {base}/api/hello | grep x-served-by   # response header set by asm-proxy
  curl -si {base}/v1/users                       # 410 answered by asm-proxy itself
  curl -s {base}/other -H 'x-debug: 1'           # outside /api: untouched
  tail -f {workdir / "access.log"}
""")
        if check:
            failures = await asyncio.to_thread(_check, base)
            for failure in failures:
                print(f"FAILED: {failure}")
            print("demo check passed" if not failures else "demo check FAILED")
            return 1 if failures else 0
        print("Ctrl-C to stop.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        envoy.stop()
        await server.stop(grace=1)
        await upstream.stop()
        if check:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
