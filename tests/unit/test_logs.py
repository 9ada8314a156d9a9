"""Log formats: the JSON schema's keys and order, the text form, the secret scrubber, the
exchange's ids taken when a line is made, decision log levels."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from asm_proxy import logs
from asm_proxy.api import Http, Plugin
from asm_proxy.testing import PluginHost

KEYS = ["time", "level", "logger", "message", "worker", "plugin", "request_id", "trace_id"]
KEYS += ["event"]


def record(message: str, name: str = "asm_proxy.x", **extra: object) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, logging.INFO, "f", 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_json_schema() -> None:
    line = orjson.loads(logs.JsonFormatter().format(record("hello")))
    assert list(line) == KEYS
    assert line["message"] == "hello" and line["level"] == "info"
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_event_data_and_error() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError as exc:
        made = record("failed", event="decision", data={"a": 1})
        made.exc_info = (type(exc), exc, exc.__traceback__)
    line = orjson.loads(logs.JsonFormatter().format(made))
    assert line["event"] == "decision" and line["data"] == {"a": 1}
    assert line["error"]["type"] == "ValueError" and "bad thing" in line["error"]["stack"]


@pytest.mark.parametrize(
    "text",
    [
        "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl here",
        "header Authorization: Bearer abc.def-ghi_123 seen",
        "basic: Basic Y2Fyb2w6czNjcmV0",
    ],
)
def test_credentials_are_scrubbed(text: str) -> None:
    scrubbed = logs.scrub(text)
    assert "[REDACTED]" in scrubbed
    for secret in ("c2lnbmF0dXJl", "abc.def-ghi_123", "Y2Fyb2w6czNjcmV0"):
        assert secret not in scrubbed


def test_ordinary_text_is_left_alone() -> None:
    assert logs.scrub("a basic check of Bearer tokens") == "a basic check of Bearer tokens"


class Talks(Plugin):
    def on_request_headers(self, http: Http) -> None:
        self.log.warning("looked at %s", http.request.path)


def test_lines_carry_the_exchanges_ids(caplog: pytest.LogCaptureFixture) -> None:
    """A plugin's line names the plugin, the request id and the trace id of the exchange,
    taken when the line is made (caplog formats it later, elsewhere)."""
    caplog.set_level(logging.WARNING)
    host = PluginHost(Talks, name="talker")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    host.request_headers(
        {":path": "/x", "x-request-id": "req-1", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    )
    (made,) = [r for r in caplog.records if r.name == "asm_proxy.plugin.talker"]
    line = orjson.loads(logs.JsonFormatter().format(made))
    assert (line["plugin"], line["request_id"], line["trace_id"]) == ("talker", "req-1", trace)
    text = logs.TextFormatter().format(made)
    assert "looked at /x" in text and "request_id=req-1" in text and f"trace_id={trace}" in text


class Decides(Plugin):
    guards_access = True

    def on_request_headers(self, http: Http) -> None:
        allowed = http.request.headers.get("x-ok") == "1"
        self.log_decision(http, allowed=allowed, reason="ok" if allowed else "nope", who="x")


@pytest.fixture
def decision_log() -> Iterator[None]:
    saved = logs.decision_log
    yield
    logs.decision_log = saved


@pytest.mark.parametrize(("level", "logged"), [("all", 2), ("deny", 1), ("none", 0)])
def test_decision_log_levels(
    decision_log: None, caplog: pytest.LogCaptureFixture, level: logs.DecisionLog, logged: int
) -> None:
    logs.decision_log = level
    caplog.set_level(logging.INFO, logger="asm_proxy.decision")
    host = PluginHost(Decides, name="gate")
    host.request_headers({":path": "/a?secret=1", "x-ok": "1"})
    host.new_exchange().request_headers({":path": "/b"})
    decided = [r for r in caplog.records if getattr(r, "event", None) == "decision"]
    assert len(decided) == logged
    if logged:
        data = decided[-1].data  # type: ignore[attr-defined]
        assert data["decision"] == "deny" and data["reason"] == "nope" and data["who"] == "x"
        assert data["status"] == 403 and data["path"] == "/b"
