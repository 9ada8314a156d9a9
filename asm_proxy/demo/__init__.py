"""`asm-proxy demo`: a real Envoy, asm-proxy (`asm-proxy serve`: supervisor, two workers,
admin endpoint) and the upstreams the seed plugins are for, all on loopback.

    echo        an HTTP upstream that answers with the request it saw, as JSON
    provider    the same, standing for the service `provider.shop.svc.cluster.local`
    nacos       a Nacos 1.x HTTP naming API answering the provider's pod IPs
    nacos-grpc  a Nacos 2.x gRPC naming API answering the same

Envoy listens on --port (10000 by default), the rest on ephemeral ports and asm-proxy on
Unix sockets in the scratch directory. The config is written there and watched, so editing
it shows hot reload. `--check` sends the demo requests itself, prints what came back and
exits non-zero if a plugin did not do its job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from asm_proxy.config import parse_file
from asm_proxy.demo import registries
from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.supervisor import worker_addresses
from asm_proxy.upstream import EchoUpstream

PROVIDER = "provider.shop.svc.cluster.local"
ISSUER = "https://idp.demo.local"
BODY_KEYS = ("request_body", "request_body_bytes", "request_body_truncated")
ACCESS_LOG_KEYS = (*BODY_KEYS, "nacos", "nacos_grpc", "auth")
NACOS_QUERY = (
    "/nacos/v1/ns/instance/list?serviceName=DEFAULT_GROUP%40%40provider"
    f"&namespaceId={registries.NAMESPACE}&clusters=&healthyOnly=false"
)
LOGIN = {"user": "ada", "password": "hunter2-s3cr3t"}
#: The echo upstream answers a login as a login endpoint would, not with the request (a
#: password inside a JSON string of the response would not be found by body_log's keys).
LOGIN_HEADERS = {
    "content-type": "application/json",
    "x-echo-body": '{"welcome": "ada"}',
    "x-echo-content-type": "application/json",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token the demo's auth plugin accepts (alg `none` if header says so)."""
    header = header or {"alg": "HS256", "typ": "JWT"}
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "orders", "sub": "alice", "iat": now, "exp": now + 3600}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if header["alg"] == "none":
        return signing + ".c2lnbmVk"  # alg none with a made-up signature: an attack
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def _fetch(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read().decode()


class AsmProxy:
    """`asm-proxy serve` as its own process, logging JSON lines into a file."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.log_path = workdir / "asm-proxy.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "ASM_PROXY_LOG_FORMAT": "json"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asm_proxy",
                "serve",
                "--config",
                str(config),
                "--admin",
                "127.0.0.1:0",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        self.admin = ""

    def wait_ready(self, limit: float = 60.0) -> None:
        """Until the admin endpoint answers /readyz with 200 (the workers serve)."""
        give_up = time.monotonic() + limit
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"asm-proxy exited:\n{self.log_path.read_text()}")
            if not self.admin:
                found = re.search(r"admin endpoint on (http://[0-9.:]+)", self.log_path.read_text())
                self.admin = found.group(1) if found else ""
            if self.admin:
                with contextlib.suppress(OSError):
                    if _fetch(self.admin + "/readyz")[0] == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"asm-proxy did not get ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _nacos_grpc_query(envoy_port: int) -> dict[str, Any]:
    """A Nacos 2 client's ServiceQueryRequest through Envoy; the serviceInfo answered."""
    import grpc

    from asm_proxy_handlers.discovery.nacos_grpc_pb2 import Payload

    options = [("grpc.default_authority", "nacos-grpc")]
    with grpc.insecure_channel(f"127.0.0.1:{envoy_port}", options=options) as channel:
        call = channel.unary_unary(
            "/Request/request",
            request_serializer=Payload.SerializeToString,
            response_deserializer=Payload.FromString,
        )
        answer = call(registries.query_request(), timeout=10)
    info: dict[str, Any] = json.loads(answer.body.value)["serviceInfo"]
    return info


def _access_log_line(path: Path, wanted: str, limit: float = 10.0) -> dict[str, Any] | None:
    """The access log's line for a request path starting with `wanted` (Envoy writes it
    after the response; waits for it)."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry: dict[str, Any] = json.loads(line)
                    if str(entry.get("path", "")).startswith(wanted):
                        return entry
        time.sleep(0.2)
    return None


def _check(
    base: str, port: int, admin: str, secret: bytes, access_log: Path, log_path: Path
) -> list[str]:
    """Send the demo's requests; return what did not behave."""
    failures = []

    def expect(ok: bool, failure: str) -> None:
        if not ok:
            failures.append(failure)

    print("-- headers and direct_response")
    status, headers, body = _fetch(f"{base}/api/hello", {"x-debug": "1"})
    print(f"GET /api/hello -> {status}, x-served-by: {headers.get('x-served-by')}")
    expect(
        status == 200 and '"x-tenant": "blue"' in body and '"x-debug"' not in body,
        "tenant-header did not set x-tenant / remove x-debug on the request",
    )
    expect(headers.get("x-served-by") == "asm-proxy", "tenant-header: no x-served-by")
    status, _, body = _fetch(f"{base}/v1/users")
    print(f"GET /v1/users -> {status}: {body.strip()}")
    expect(status == 410, "retired-v1 did not answer 410")
    status, headers, _ = _fetch(f"{base}/other", {"x-debug": "1"})
    print(f"GET /other -> {status}, x-served-by: {headers.get('x-served-by')}")
    expect(status == 200 and not headers.get("x-served-by"), "a request outside /api changed")

    print("-- nacos (1.x HTTP): pod IPs come back as the service's host name")
    status, _, body = _fetch(base + NACOS_QUERY, {"host": "nacos"})
    ips = [h["ip"] for h in json.loads(body)["hosts"]] if status == 200 else []
    print(f"GET {NACOS_QUERY} (Host: nacos) -> {status}, hosts {ips}")
    expect(status == 200 and bool(ips) and set(ips) == {PROVIDER}, "nacos did not rewrite the IPs")

    print("-- nacos_grpc (2.x gRPC): the same inside a QueryServiceResponse")
    try:
        info = _nacos_grpc_query(port)
        hosts = [(h["ip"], h["port"]) for h in info["hosts"]]
    except Exception as exc:  # a gRPC error: reported as the failure
        hosts = []
        print(f"ServiceQueryRequest failed: {exc}")
    print(f"ServiceQueryRequest provider -> hosts {hosts}")
    expect(bool(hosts) and set(hosts) == {(PROVIDER, 8080)}, "nacos_grpc did not rewrite")

    print("-- reverse_dns: a request to a pod IP is routed by its service's name")
    ip = registries.POD_IPS[0]
    status, _, body = _fetch(f"{base}/hello", {"host": f"{ip}:8080"})
    seen = json.loads(body) if status == 200 else {}
    print(
        f"GET /hello (Host: {ip}:8080) -> {status}, upstream {seen.get('upstream')}, "
        f"host {seen.get('headers', {}).get('host')}"
    )
    expect(
        seen.get("upstream") == "provider"
        and seen.get("headers", {}).get("host") == f"{PROVIDER}:8080",
        "reverse_dns did not route the pod IP to the provider",
    )

    print("-- auth: a JWT accepted, an alg:none token refused")
    token = make_jwt(secret)
    status, _, _ = _fetch(f"{base}/orders", {"authorization": f"Bearer {token}"})
    print(f"GET /orders (a valid JWT) -> {status}")
    expect(status == 200, "auth refused a valid JWT")
    attack = make_jwt(secret, {"alg": "none", "typ": "JWT"})
    status, headers, _ = _fetch(f"{base}/orders", {"authorization": f"Bearer {attack}"})
    print(f"GET /orders (alg none) -> {status}, {headers.get('www-authenticate')}")
    expect(status == 401, "auth did not refuse an alg:none token")

    print("-- body_log: the request body in Envoy's access log, the password redacted")
    login = json.dumps(LOGIN).encode()
    status, _, _ = _fetch(f"{base}/login", LOGIN_HEADERS, login)
    entry = _access_log_line(access_log, "/login")
    logged = entry.get("md_request_body") if entry else None
    print(f"POST /login -> {status}; access log request_body: {logged}")
    expect(
        isinstance(logged, str) and "[REDACTED]" in logged and LOGIN["password"] not in logged,
        "body_log: no redacted body in the access log",
    )

    print("-- metrics: every worker in one scrape")
    status, _, text = _fetch(f"{admin}/metrics")
    wanted = [
        'asm_proxy_hook_calls_total{event="request_headers",outcome="ok",plugin="auth"',
        "asm_proxy_plugin_discovery_answers_total",
        "asm_proxy_plugin_reverse_dns_hosts_total",
        "asm_proxy_plugin_auth_decisions_total",
        "asm_proxy_plugin_body_log_bodies_total",
    ]
    lines = text.splitlines()
    for name in wanted:
        found = [line for line in lines if line.startswith(name)]
        print(found[0] if found else f"(missing) {name}")
        expect(status == 200 and bool(found), f"metrics: no {name}")
    grpc_answers = [
        line
        for line in lines
        if line.startswith("asm_proxy_plugin_discovery_answers_total")
        and 'plugin="nacos-grpc"' in line
    ]
    print(grpc_answers[0] if grpc_answers else "(missing) nacos-grpc's answers")
    expect(bool(grpc_answers), "metrics: no answers counted for nacos-grpc")

    print("-- logs: auth's decisions in asm-proxy's JSON log, no credential")
    text = log_path.read_text()
    decisions = [line for line in text.splitlines() if '"event":"decision"' in line]
    print(decisions[-1] if decisions else "(no decision line)")
    expect(len(decisions) >= 2, "no decision log lines")
    named = {"the JWT": token, "the attack token": attack, "the login password": LOGIN["password"]}
    for what, secret_text in {**named, "the HMAC secret": secret.decode()}.items():
        expect(secret_text not in text, f"{what} is in asm-proxy's log")
    return failures


async def run_demo(port: int = 10000, check: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="asm-proxy-demo-"))
    secret = secrets.token_hex(32).encode()
    (workdir / "hmac-secret").write_bytes(secret)
    template = resources.files("asm_proxy.demo").joinpath("config.yaml").read_text()
    config_path = workdir / "config.yaml"
    config_path.write_text(template.replace("@DIR@", str(workdir)))
    access_log = workdir / "access.log"
    echo, provider = EchoUpstream("echo"), EchoUpstream("provider")
    nacos, nacos_grpc = registries.NacosHttp(), registries.NacosGrpc()
    started: list[Any] = []
    asm: AsmProxy | None = None
    envoy: EnvoyProcess | None = None
    try:
        for upstream in (echo, provider, nacos, nacos_grpc):
            await upstream.start()
            started.append(upstream)
        asm = AsmProxy(workdir, config_path)
        await asyncio.to_thread(asm.wait_ready)
        sock = workdir / "asm-proxy.sock"
        settings = parse_file(config_path).settings
        assert settings is not None  # the demo's config has them
        setup = Setup(
            asm_proxy=worker_addresses(settings.listen, settings.workers),
            clusters={
                "echo": echo.port,
                "provider": provider.port,
                "nacos": nacos.port,
                "nacos_grpc": nacos_grpc.port,
            },
            grpc_clusters=("nacos_grpc",),
            routes=[
                Route("nacos", domains=["nacos", "nacos:*"]),
                Route("nacos_grpc", domains=["nacos-grpc", "nacos-grpc:*"], timeout="0s"),
                Route("provider", domains=[PROVIDER, PROVIDER + ":*"]),
                Route("echo"),
            ],
            ext_proc=ExtProc(request_attributes=["connection.id"], message_timeout="2s"),
            access_log=str(access_log),
            access_log_keys=ACCESS_LOG_KEYS,
            listen_port=port,
        )
        envoy = EnvoyProcess(bootstrap(setup), workdir)
        await asyncio.to_thread(envoy.start)
        base, admin = envoy.url, asm.admin
        token = make_jwt(secret)
        print(f"""
asm-proxy demo is up:
  Envoy      {base}   (admin http://{envoy.admin})
  asm-proxy  unix:{sock}.{{0,1}}, 2 workers   admin {admin}
             config {config_path} (edit it: it reloads)   log {asm.log_path}
  upstreams  echo, provider (echo the request as JSON), a Nacos HTTP and a Nacos gRPC API

Try:
  curl -s {base}/api/hello -H 'x-debug: 1'      # upstream sees x-tenant: blue, no x-debug
  curl -si {base}/v1/users                       # 410 answered by asm-proxy itself
  curl -s '{base}{NACOS_QUERY}' -H 'host: nacos'
                                                 # nacos: pod IPs -> {PROVIDER}
  curl -s {base}/hello -H 'host: {registries.POD_IPS[0]}:8080'
                                                 # reverse_dns: routed to the provider
  curl -si {base}/orders -H 'authorization: Bearer {token}'
                                                 # auth: a valid JWT (HS256) -> 200
  curl -si {base}/orders -H 'authorization: Bearer {make_jwt(secret, {"alg": "none"})}'
                                                 # auth: alg none -> 401
  curl -s {base}/login -H 'content-type: application/json' -d '{json.dumps(LOGIN)}' \\
       -H 'x-echo-body: {{"welcome": "ada"}}' -H 'x-echo-content-type: application/json'
  tail -1 {access_log}   # body_log: md_request_body, password [REDACTED]
  grep '"decision"' {asm.log_path}               # auth's decision log
  curl -s {admin}/metrics | grep asm_proxy_plugin_   # the plugins' metrics, all workers
  curl -s {admin}/config_dump                    # the running config, secrets redacted
  (nacos_grpc: `asm-proxy demo --check` sends a Nacos 2 ServiceQueryRequest through Envoy)
""")
        if check:
            failures = await asyncio.to_thread(
                _check, base, envoy.port, admin, secret, access_log, asm.log_path
            )
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
        if envoy is not None:
            envoy.stop()
        if asm is not None:
            await asyncio.to_thread(asm.stop)
        for upstream in reversed(started):
            await upstream.stop()
        if check:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
