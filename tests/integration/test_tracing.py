"""Traces through real Envoy: the exchange span is parented from the client's traceparent
(or B3 headers), each hook gets one child span, an unsampled parent makes no spans, a
failed hook's span says so, log lines carry the trace id; and a real `asm-proxy serve`
exports over OTLP as the OTEL_* environment says."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from asm_proxy import tracing
from asm_proxy.envoy_bootstrap import ExtAuthz, ExtProc, Route, Setup, bootstrap
from asm_proxy.envoy_process import EnvoyProcess
from asm_proxy.logs import JsonFormatter
from asm_proxy.trace_headers import DECLINED, NONE, OTHER
from tests.integration.conftest import StackFactory
from tests.support.background import Upstreams
from tests.support.serve import ServeProcess, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

CONFIG = """
plugins:
  - name: tenant
    type: headers
    phase: AUTHN
    config: {request: {set: {x-tenant: blue}}, response: {set: {x-served-by: asm-proxy}}}
  - name: tag
    type: headers
    config: {request: {set: {x-tag: '1'}}}
  - name: breaks
    type: tests.support.plugins:Raiser
    failStrategy: FAIL_OPEN
    match: [{paths: [{prefix: /break}]}]
"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing into memory for the servers of this process, sampling by the parent's flag
    (and nothing without a parent, so only the test's requests make spans)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(tracing.Tracing(provider))
    yield exporter
    tracing.install(None)
    provider.shutdown()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    out = {span.name: span for span in finished}
    assert len(out) == len(finished), [s.name for s in finished]
    return out


def wait_spans(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    """The exchange span ends when its stream does, just after Envoy has its answer."""
    wait_for(lambda: len(exporter.get_finished_spans()) >= count, f"{count} spans", 10)
    return exporter.get_finished_spans()


def test_spans_are_parented_from_the_clients_traceparent(
    stack: StackFactory, spans: InMemorySpanExporter
) -> None:
    """One exchange span, child of the client's span, with the HTTP attributes; one span
    per hook under it: both plugins' request hooks and the response hook."""
    s = stack(CONFIG)
    response = s.get("/api/items?token=secret", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.status_code == 200 and response.headers["x-served-by"] == "asm-proxy"
    named = by_name(wait_spans(spans, 4))
    assert set(named) == {
        "ext_proc",
        "tenant request_headers",
        "tag request_headers",
        "tenant response_headers",
    }
    exchange = named["ext_proc"]
    assert exchange.kind is SpanKind.SERVER
    assert format(exchange.context.trace_id, "032x") == TRACE
    assert exchange.parent is not None and format(exchange.parent.span_id, "016x") == PARENT
    assert exchange.attributes is not None
    assert exchange.attributes["http.request.method"] == "GET"
    assert exchange.attributes["url.path"] == "/api/items"  # no query: it may hold secrets
    assert exchange.attributes["server.address"] == "127.0.0.1"
    assert exchange.attributes["http.response.status_code"] == 200
    assert exchange.attributes["asm_proxy.end"] in ("complete", "closed_early")
    for name in ("tenant request_headers", "tag request_headers", "tenant response_headers"):
        hook = named[name]
        assert hook.parent is not None and hook.parent.span_id == exchange.context.span_id
        assert hook.context.trace_id == exchange.context.trace_id
        assert hook.attributes is not None and hook.attributes["asm_proxy.outcome"] == "ok"
    tenant = named["tenant request_headers"].attributes
    assert tenant is not None
    assert (tenant["asm_proxy.plugin.name"], tenant["asm_proxy.plugin.type"]) == (
        "tenant",
        "headers",
    )
    assert tenant["asm_proxy.hook"] == "on_request_headers"
    assert named["tenant request_headers"].start_time < named["tag request_headers"].start_time


def test_b3_headers_parent_too(stack: StackFactory, spans: InMemorySpanExporter) -> None:
    """Istio's B3 headers, multi-header or single."""
    s = stack(CONFIG)
    s.get("/", headers={"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"})
    exchange = by_name(wait_spans(spans, 4))["ext_proc"]
    assert format(exchange.context.trace_id, "032x") == TRACE
    assert exchange.parent is not None and format(exchange.parent.span_id, "016x") == PARENT
    spans.clear()
    other = "a" * 32
    s.get("/", headers={"b3": f"{other}-{PARENT}-1"})
    exchange = by_name(wait_spans(spans, 4))["ext_proc"]
    assert format(exchange.context.trace_id, "032x") == other


def test_an_unsampled_parent_makes_no_spans(
    stack: StackFactory, spans: InMemorySpanExporter
) -> None:
    s = stack(CONFIG)
    assert s.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"}).status_code == 200
    assert s.get("/").status_code == 200  # no parent, and the root sampler says no
    s.get("/", headers={"traceparent": f"00-{'b' * 32}-{PARENT}-01"})
    finished = wait_spans(spans, 4)
    assert {format(span.context.trace_id, "032x") for span in finished} == {"b" * 32}


def test_trace_headers_are_read_off_envoys_bytes(
    stack: StackFactory, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The byte reading understands the messages Envoy really sends: no trace headers and
    an unsampled parent (traceparent, B3) are answered from the bytes, and only what needs
    the decoded headers goes on to them."""
    answers: list[int] = []
    real = tracing.verdict

    def recording(data: bytes) -> int:
        answers.append(real(data))
        return answers[-1]

    monkeypatch.setattr(tracing, "verdict", recording)
    s = stack(CONFIG)
    b3 = {"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "0"}
    assert s.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"}).status_code == 200
    assert s.get("/", headers=b3).status_code == 200
    assert s.get("/", headers={"b3": f"{TRACE}-{PARENT}-0"}).status_code == 200
    assert s.get("/", headers={"user-agent": "b3-traceparent"}).status_code == 200
    assert s.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}).status_code == 200
    assert by_name(wait_spans(spans, 4))["ext_proc"].context.trace_id == int(TRACE, 16)
    assert answers == [DECLINED, DECLINED, DECLINED, NONE, OTHER]


def test_a_failed_hook_and_the_log(
    stack: StackFactory, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """The failing hook's span has status ERROR and the exception; the warning it caused is
    logged with the exchange's trace id."""
    caplog.set_level(logging.WARNING, logger="asm_proxy.chain")
    s = stack(CONFIG)
    s.get("/break", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    named = by_name(wait_spans(spans, 5))
    broken = named["breaks request_headers"]
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.attributes is not None and broken.attributes["asm_proxy.outcome"] == "error"
    assert [e.name for e in broken.events] == ["exception"]
    (record,) = [r for r in caplog.records if "breaks" in r.getMessage()]
    line = JsonFormatter().format(record)
    assert f'"trace_id":"{TRACE}"' in line and '"plugin":"breaks"' in line


def test_ext_authz_check(stack: StackFactory, spans: InMemorySpanExporter) -> None:
    """A Check is an exchange too: its span and the AUTHN plugin's hook span."""
    s = stack(CONFIG, ext_authz=ExtAuthz(), use_ext_proc=False)
    assert s.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}).status_code == 200
    named = by_name(wait_spans(spans, 2))
    assert set(named) == {"ext_authz", "tenant request_headers"}
    check = named["ext_authz"]
    assert format(check.context.trace_id, "032x") == TRACE
    assert check.attributes is not None and check.attributes["asm_proxy.end"] == "allowed"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on loopback, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of everything received."""
        out = []
        with self.lock:
            for request in self.requests:
                for rs in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        out += [(attrs, span) for span in ss.spans]
        return out


def test_serve_exports_over_otlp_as_the_environment_says(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """`asm-proxy serve` with OTEL_TRACES_EXPORTER=otlp: the worker sends its spans to the
    collector at OTEL_EXPORTER_OTLP_ENDPOINT, under OTEL_SERVICE_NAME, sampled by the
    parent (the SDK's default sampler)."""
    collector = Collector()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_SERVICE_NAME": "asm-proxy-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    serve = ServeProcess(tmp_path / "serve", "listen: 127.0.0.1:0\nworkers: 1\n" + CONFIG, env=env)
    envoy = None
    try:
        address = serve.address
        setup = Setup(
            asm_proxy=address, clusters=upstreams.ports, routes=[Route("a")], ext_proc=ExtProc()
        )
        envoy = EnvoyProcess(bootstrap(setup), tmp_path, name="envoy-otlp").start()
        import httpx

        with httpx.Client(base_url=envoy.url, timeout=30) as client:
            assert client.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}).is_success
            assert client.get("/").is_success  # no parent: the ratio 0 root sampler drops it
        wait_for(lambda: len(collector.spans()) >= 4, "spans at the collector", 20)
    finally:
        if envoy is not None:
            envoy.stop()
        serve.close()
        collector.server.stop(0)
    received = collector.spans()
    assert {attrs["service.name"] for attrs, _ in received} == {"asm-proxy-test"}
    assert {span.trace_id.hex() for _, span in received} == {TRACE}
    assert sorted(span.name for _, span in received) == [
        "ext_proc",
        "tag request_headers",
        "tenant request_headers",
        "tenant response_headers",
    ]
