"""`body_log` through real Envoy: bodies read back from Envoy's own access log file
(`%DYNAMIC_METADATA(asm-proxy:request_body)%`), redacted and capped, while the bodies
themselves reach the upstream and the client byte for byte unchanged."""

from __future__ import annotations

import logging

import orjson
import pytest

from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.upstream import _pattern
from tests.integration.conftest import Stack, StackFactory

SECRET = "hunter2-s3cr3t"
CONFIG = """
plugins:
  - name: body-log
    type: body_log
    failStrategy: FAIL_OPEN
    config:
      maxBytes: 1000
      redactKeys: [password, token]
      redactHeaders: [authorization]
"""
KEYS = tuple(
    f"{d}_body{suffix}"
    for d in ("request", "response")
    for suffix in ("", "_bytes", "_truncated", "_omitted", "_encoding")
)
LOGIN = orjson.dumps(
    {"user": "ada", "password": SECRET, "prefs": {"lang": "日本語", "token": SECRET}, "n": [1, 2]}
)
REDACTED_LOGIN = {
    "user": "ada",
    "password": "[REDACTED]",
    "prefs": {"lang": "日本語", "token": "[REDACTED]"},
    "n": [1, 2],
}


def body_stack(stack: StackFactory, mode: str) -> Stack:
    trailers = "SEND" if mode == "FULL_DUPLEX_STREAMED" else "SKIP"
    ext_proc = ExtProc(
        request_body_mode=mode,
        response_body_mode=mode,
        request_trailer_mode=trailers,
        response_trailer_mode=trailers,
    )
    return stack(CONFIG, ext_proc=ext_proc, access_log_keys=KEYS)


MODES = ["NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL"]


@pytest.mark.parametrize("mode", MODES)
def test_json_bodies_in_the_access_log(
    stack: StackFactory, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON login and its echo: both bodies pass unchanged; Envoy's access log has them
    with the secrets redacted; asm-proxy logs one JSON line for the exchange."""
    caplog.set_level(logging.INFO, logger="asm_proxy.plugin.body-log")
    s = body_stack(stack, mode)
    resp = s.post(
        "/login?user=ada",
        content=LOGIN,
        headers={
            "content-type": "application/json",
            "x-echo-raw-body": "1",
            "authorization": f"Bearer {SECRET}",
        },
    )
    assert resp.status_code == 200
    assert s.seen("a").body == LOGIN
    assert resp.content == LOGIN
    (entry,) = s.log_entries(1)
    assert orjson.loads(entry["md_request_body"]) == REDACTED_LOGIN
    assert orjson.loads(entry["md_response_body"]) == REDACTED_LOGIN
    assert entry["md_request_body_bytes"] == len(LOGIN)
    assert entry["md_response_body_truncated"] is False
    assert SECRET not in s.access_log.read_text()
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name.endswith("body-log")]
    assert len(lines) == 1
    assert lines[0]["request"]["headers"]["authorization"] == "[REDACTED]"
    assert lines[0]["response"]["body"] == entry["md_response_body"]
    assert SECRET not in caplog.text


@pytest.mark.parametrize("mode", ["NONE", "STREAMED", "BUFFERED"])
def test_large_bodies_are_capped(stack: StackFactory, mode: str) -> None:
    """A 200 kB text upload and a 150 kB chunked answer: upstream and client get every
    byte, the log the first 1000 of each, marked truncated, with the full sizes."""
    s = body_stack(stack, mode)
    upload = _pattern(200_000)
    resp = s.post(
        "/upload",
        content=upload,
        headers={
            "content-type": "text/plain",
            "x-echo-body-bytes": "150000",
            "x-echo-content-type": "text/plain",
            "x-echo-chunked": "1",
        },
    )
    assert s.seen("a").body == upload
    assert resp.content == _pattern(150_000)
    (entry,) = s.log_entries(1)
    assert entry["md_request_body"] == upload[:1000].decode()
    assert entry["md_request_body_truncated"] is True
    assert entry["md_request_body_bytes"] == 200_000
    assert entry["md_response_body"] == _pattern(1000).decode()
    assert entry["md_response_body_bytes"] == 150_000


def test_unlogged_types_and_binary(stack: StackFactory) -> None:
    """A binary upload of a logged type is noted without its bytes; an image answer (not a
    logged type) leaves no response keys at all."""
    s = stack(
        CONFIG.replace("maxBytes: 1000", "contentTypes: [application/octet-stream, text/*]"),
        access_log_keys=KEYS,
    )
    data = bytes(range(256)) * 4
    resp = s.post(
        "/blob",
        content=data,
        headers={
            "content-type": "application/octet-stream",
            "x-echo-raw-body": "1",
            "x-echo-content-type": "image/png",
        },
    )
    assert resp.content == data
    (entry,) = s.log_entries(1)
    assert entry["md_request_body_omitted"] == "binary"
    assert entry["md_request_body_bytes"] == 1024
    assert entry["md_request_body"] is None
    assert entry["md_response_body_bytes"] is None


def test_full_duplex_streamed(stack: StackFactory, caplog: pytest.LogCaptureFixture) -> None:
    """FULL_DUPLEX_STREAMED: bodies pass unchanged, the request body reaches the access
    log, and the log line has both bodies."""
    caplog.set_level(logging.INFO, logger="asm_proxy.plugin.body-log")
    s = body_stack(stack, "FULL_DUPLEX_STREAMED")
    headers = {"content-type": "application/json", "x-echo-raw-body": "1"}
    resp = s.post("/login", content=LOGIN, headers=headers)
    assert s.seen("a").body == LOGIN
    assert resp.content == LOGIN
    (entry,) = s.log_entries(1)
    assert orjson.loads(entry["md_request_body"]) == REDACTED_LOGIN
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name.endswith("body-log")]
    assert orjson.loads(line["response"]["body"]) == REDACTED_LOGIN


def test_full_duplex_response_metadata(stack: StackFactory) -> None:
    """FULL_DUPLEX_STREAMED: the response body in the access log."""
    s = body_stack(stack, "FULL_DUPLEX_STREAMED")
    headers = {"content-type": "application/json", "x-echo-raw-body": "1"}
    s.post("/login", content=LOGIN, headers=headers)
    (entry,) = s.log_entries(1)
    assert orjson.loads(entry["md_response_body"]) == REDACTED_LOGIN
