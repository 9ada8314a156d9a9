"""The admin endpoint of a real `asm-proxy serve` (supervisor and two workers) behind a
real Envoy: one /metrics scrape counts what both workers did, /readyz follows start and
drain, /config_dump and /plugins tell what runs with its secrets redacted, a replaced
worker's counts stay in the totals, and the log is JSON lines with the stable keys."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asm_proxy.envoy_bootstrap import ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from tests.conftest import TRANSPORTS
from tests.support.background import Upstreams
from tests.support.serve import ServeProcess, total, wait_for

pytestmark = pytest.mark.envoy

API_KEY = "demo-key-Zq8rT2vX"
KEY_HASH = hashlib.sha256(API_KEY.encode()).hexdigest()


def config(sock: Path, extra: str = "") -> str:
    return f"""
listen: unix:{sock}
workers: 2
reloadInterval: 0s
drainDelay: 3s
drainTimeout: 5s
admin: {{listen: 127.0.0.1:0}}
{extra}
plugins:
  - name: keys
    type: auth
    phase: AUTHN
    match: [{{paths: [{{prefix: /private}}]}}]
    config:
      apiKeys:
        keys: [{{consumer: ci, sha256: {KEY_HASH}}}]
  - name: tenant
    type: headers
    config: {{request: {{set: {{x-tenant: blue}}}}}}
  - name: breaks
    type: tests.support.plugins:Raiser
    failStrategy: FAIL_OPEN
    match: [{{paths: [{{prefix: /break}}]}}]
  - name: retired
    type: direct_response
    match: [{{paths: [{{prefix: /v1/}}]}}]
    config: {{status: 410, body: "gone\\n"}}
"""


class Running:
    def __init__(self, serve: ServeProcess, envoy: EnvoyProcess) -> None:
        self.serve = serve
        self.envoy = envoy
        self.client = httpx.Client(base_url=envoy.url, timeout=30)


@pytest.fixture
def running(
    tmp_path: Path, upstreams: Upstreams, request: pytest.FixtureRequest
) -> Iterator[Running]:
    """`serve` on the default transport, or on the one a test names (indirect param)."""
    sock = tmp_path / "asm.sock"
    transport: str | None = getattr(request, "param", None)
    args = ("--transport", transport) if transport else ()
    serve = ServeProcess(tmp_path / "serve", config(sock), *args)
    try:
        serve.wait_message(r"serving on")
        setup = Setup(
            asm_proxy=[f"unix:{sock}.0", f"unix:{sock}.1"],
            clusters=upstreams.ports,
            routes=[Route("a")],
            ext_proc=ExtProc(message_timeout="5s"),
        )
        envoy = EnvoyProcess(bootstrap(setup), tmp_path, name="envoy-admin").start()
    except BaseException:
        serve.close()
        raise
    r = Running(serve, envoy)
    yield r
    r.client.close()
    envoy.stop()
    serve.close()


@pytest.mark.parametrize("running", TRANSPORTS, indirect=True)
def test_one_scrape_counts_every_worker(running: Running) -> None:
    """Envoy alternates between the two workers' sockets; the supervisor's /metrics sums
    them: hook calls by plugin and outcome, FAIL_OPEN bypasses, immediate responses by
    status, streams by how they ended, messages by kind, and each worker's process. On
    every transport (the stream counts come from services.py, which all of them call)."""
    c = running.client
    for _ in range(10):
        assert c.get("/api").status_code == 200
    for _ in range(4):
        assert c.get("/break").status_code == 200
    assert c.get("/v1/old").status_code == 410
    assert c.get("/private").status_code == 401
    assert c.get("/private", headers={"x-api-key": API_KEY}).status_code == 200
    m = running.serve.metrics()
    calls = m["asm_proxy_hook_calls_total"]
    # keys (AUTHN) answers /private without a key before tenant runs: 16 of 17.
    assert total(calls, plugin="tenant", type="headers", outcome="ok") == 16
    assert total(calls, plugin="breaks", outcome="error") == 4
    assert total(calls, plugin="retired", outcome="respond") == 1
    assert total(calls, plugin="keys", type="auth", outcome="respond") == 1
    assert total(calls, plugin="keys", outcome="ok") == 1
    assert total(m["asm_proxy_fail_open_bypasses_total"], plugin="breaks") == 4
    assert total(m["asm_proxy_hook_duration_seconds_count"], plugin="tenant") == 16
    immediate = m["asm_proxy_immediate_responses_total"]
    assert total(immediate, service="ext_proc", status="410") == 1
    assert total(immediate, service="ext_proc", status="401") == 1
    streams = m["asm_proxy_streams_total"]
    assert total(streams, service="ext_proc") == 17
    assert total(streams, service="ext_proc", end="protocol_error") == 0
    assert total(m["asm_proxy_stream_duration_seconds_count"], service="ext_proc") == 17
    assert total(m["asm_proxy_messages_total"], kind="request_headers") == 17
    assert total(m["asm_proxy_streams_open"]) == 0
    # Both workers served, and each has its process metrics.
    assert {dict(k)["worker"] for k in m["asm_proxy_worker_cpu_seconds_total"]} == {"0", "1"}
    assert m["asm_proxy_workers"][()] == 2
    text = running.serve.config.read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert total(m["asm_proxy_config_info"], hash=digest) == 1
    assert m["asm_proxy_plugins_loaded"][()] == 4
    assert total(m["asm_proxy_plugin_info"], plugin="keys", type="auth", phase="AUTHN") == 1
    assert "process_cpu_seconds_total" in m  # the supervisor's own


def test_config_dump_and_plugins(running: Running) -> None:
    """/config_dump shows the running config as written, with the key's hash redacted, its
    hash and what each worker runs; /plugins where each type comes from."""
    dump = running.serve.get("/config_dump").json()
    text = running.serve.config.read_text()
    assert dump["hash"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert KEY_HASH not in str(dump)
    keys = dump["config"]["plugins"][0]["config"]["apiKeys"]["keys"]
    assert keys == [{"consumer": "ci", "sha256": "[REDACTED]"}]
    assert [p["name"] for p in dump["chain"]] == ["keys", "tenant", "breaks", "retired"]
    assert {w["config_hash"] for w in dump["workers"]} == {dump["hash"]}
    assert len(dump["workers"]) == 2
    assert dump["loaded_at"] > 0
    plugins = running.serve.get("/plugins").json()
    by_name = {p["name"]: p for p in plugins["chain"]}
    assert by_name["tenant"]["provider"].startswith("asm-proxy-handlers ")
    assert by_name["breaks"]["provider"] == "import path"
    assert by_name["keys"]["class"] == "asm_proxy_handlers.auth.plugin:AuthPlugin"
    assert "auth" in plugins["installed"]


def test_health_readiness_and_drain(running: Running) -> None:
    """Ready while serving; on SIGTERM not ready at once (the workers still accept streams
    for drainDelay), alive all the while."""
    serve = running.serve
    assert serve.get("/healthz").status_code == 200
    ready = serve.get("/readyz")
    assert ready.status_code == 200 and "2/2" in ready.text
    serve.signal(signal.SIGTERM)
    wait_for(lambda: serve.get("/readyz").status_code == 503, "not ready after SIGTERM", 5)
    assert "draining" in serve.get("/readyz").text
    assert serve.get("/healthz").status_code == 200
    assert running.client.get("/api").status_code == 200  # still served during drainDelay


def test_a_replaced_workers_counts_stay(running: Running) -> None:
    """A worker killed and replaced: the counters it had reported stay in the totals (a
    counter never goes down), the restart is counted, and readiness comes back."""
    c = running.serve
    for _ in range(6):
        assert running.client.get("/api").status_code == 200
    before = total(c.metrics()["asm_proxy_hook_calls_total"], plugin="tenant")
    assert before == 6
    pid = int(c.wait_message(r"pids (\d+),").group(1))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: c.metrics()["asm_proxy_worker_restarts_total"][()] == 1, "a restart")
    wait_for(lambda: c.get("/readyz").status_code == 200, "ready again")
    for _ in range(4):
        assert running.client.get("/api").status_code == 200
    assert total(c.metrics()["asm_proxy_hook_calls_total"], plugin="tenant") == 10


def test_log_lines_are_json_with_the_stable_keys(running: Running) -> None:
    """Every line of the supervisor's and the workers' log is one JSON object starting
    with the documented keys; a worker's lines carry its index; no secret is in it."""
    running.client.get("/break")
    running.client.get("/private", headers={"x-api-key": API_KEY})
    wait_for(lambda: any(line.get("plugin") == "breaks" for line in running.serve.lines()), "")
    lines = running.serve.lines()
    keys = ["time", "level", "logger", "message", "worker", "plugin", "request_id"]
    keys += ["trace_id", "event"]
    for line in lines:
        assert list(line)[: len(keys)] == keys
    for line in lines:
        supervisor = line["logger"] in ("asm_proxy.supervisor", "asm_proxy.admin")
        assert (line["worker"] is None) == supervisor, line
    (failure,) = [line for line in lines if line["plugin"] == "breaks"]
    assert failure["level"] == "warning" and failure["worker"] in (0, 1)
    assert failure["request_id"]  # Envoy's x-request-id of the exchange
    assert failure["error"]["type"] == "RuntimeError"
    assert API_KEY not in running.serve.text and KEY_HASH not in running.serve.text


def test_a_non_loopback_admin_address_is_refused(tmp_path: Path) -> None:
    """Without allowNonLoopback, serve refuses to start and says why."""
    serve = ServeProcess(
        tmp_path, "listen: 127.0.0.1:0\nadmin: {listen: '0.0.0.0:0'}\nplugins: []\n"
    )
    try:
        assert serve.proc.wait(30) == 1
    finally:
        serve.close()
    assert "not a loopback address" in serve.text


def test_an_unusable_config_file_shows_in_the_metrics(tmp_path: Path) -> None:
    """The supervisor's own counters: the file gone is a gauge at 1 and an event, the
    running config stays (ready), and a refused reload is counted failed."""
    serve = ServeProcess(
        tmp_path,
        "listen: 127.0.0.1:0\nreloadInterval: 100ms\nplugins: []\n",
        "--workers",
        "1",
        "--admin",
        "127.0.0.1:0",
    )
    try:
        serve.wait_message("serving on")
        assert serve.metrics()["asm_proxy_config_file_unusable"][()] == 0
        serve.config.unlink()
        wait_for(
            lambda: serve.metrics()["asm_proxy_config_file_unusable"][()] == 1, "unusable gauge"
        )
        m = serve.metrics()
        assert m["asm_proxy_config_file_unusable_events_total"][()] == 1
        assert serve.get("/readyz").status_code == 200  # the running config stays
        serve.config.write_text("plugins: [{name: a, type: nope}]\n")
        wait_for(
            lambda: total(serve.metrics()["asm_proxy_config_reloads_total"], result="failed") == 1,
            "a failed reload",
        )
        assert serve.metrics()["asm_proxy_config_file_unusable"][()] == 0
    finally:
        serve.close()
