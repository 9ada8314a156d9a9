"""The `body_log` built-in through the shared test host."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from asm_proxy.testing import BodySendMode, PluginHost, mode_of
from asm_proxy_handlers.body_log import BodyLogPlugin, Redactor, cut_utf8

SECRET = "hunter2-s3cr3t"
LOGGER = "asm_proxy.plugin.plugin-under-test"  # PluginHost names the plugin so


@dataclass
class Result:
    metadata: dict[str, Any] = field(default_factory=dict)
    request_forwarded: bytes = b""
    response_forwarded: bytes = b""
    mutated: bool = False
    steps: list[Any] = field(default_factory=list)


def run(
    host: PluginHost,
    *,
    request: list[bytes] = (),  # type: ignore[assignment]
    response: list[bytes] = (),  # type: ignore[assignment]
    request_headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
) -> Result:
    """One exchange, bodies sent in the given chunks; what Envoy forwards and the metadata."""
    out = Result()

    def take(steps: list[Any], direction: str) -> None:
        for step in steps:
            out.steps.append(step)
            out.metadata.update(step.metadata.get("asm-proxy", {}))
            out.mutated = out.mutated or step.body_mutated
            if step.body is not None:
                if direction == "request":
                    out.request_forwarded += step.body
                else:
                    out.response_forwarded += step.body

    host.new_exchange()
    take(
        [
            host.request_headers(
                {":method": "POST", **(request_headers or {})}, end_of_stream=not request
            )
        ],
        "request",
    )
    for i, chunk in enumerate(request):
        take(host.request_body(chunk, end_of_stream=i == len(request) - 1), "request")
    take([host.response_headers(response_headers or {}, end_of_stream=not response)], "response")
    for i, chunk in enumerate(response):
        take(host.response_body(chunk, end_of_stream=i == len(response) - 1), "response")
    return out


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


JSON = {"content-type": "application/json"}
LOGIN = orjson.dumps(
    {
        "user": "ada",
        "password": SECRET,
        "profile": {"name": "Ada", "apiKey": SECRET, "tokens": [{"refresh_token": SECRET}]},
        "list": [{"nested": {"Client-Secret": SECRET}}, 1, "x"],
        "note": "café ☕",
    }
)


class TestBodies:
    def test_json_bodies_redacted_in_metadata(self, caplog: pytest.LogCaptureFixture) -> None:
        """Both bodies, streamed in pieces, reach the other side unchanged; the metadata and
        the log line hold them with sensitive keys (nested ones too) redacted."""
        host = PluginHost(BodyLogPlugin, {})
        caplog.set_level(logging.INFO, logger=LOGGER)
        reply = orjson.dumps({"access_token": SECRET, "expires": 3600})
        r = run(
            host,
            request=chunks(LOGIN, 7),
            response=chunks(reply, 5),
            request_headers=JSON,
            response_headers=JSON,
        )
        assert r.request_forwarded == LOGIN
        assert r.response_forwarded == reply
        assert not r.mutated
        logged = orjson.loads(r.metadata["request_body"])
        assert logged == {
            "user": "ada",
            "password": "[REDACTED]",
            "profile": {"name": "Ada", "apiKey": "[REDACTED]", "tokens": "[REDACTED]"},
            "list": [{"nested": {"Client-Secret": "[REDACTED]"}}, 1, "x"],
            "note": "café ☕",
        }
        assert orjson.loads(r.metadata["response_body"]) == {
            "access_token": "[REDACTED]",
            "expires": 3600,
        }
        assert r.metadata["request_body_bytes"] == len(LOGIN)
        assert r.metadata["request_body_truncated"] is False
        assert r.metadata["response_body_encoding"] == "utf-8"
        (line,) = [orjson.loads(rec.getMessage()) for rec in caplog.records if rec.name == LOGGER]
        assert line["method"] == "POST"
        assert line["status"] == 200
        assert line["request"]["body"] == r.metadata["request_body"]
        assert line["response"]["bytes"] == len(reply)
        assert SECRET not in caplog.text

    def test_streamed_by_default(self) -> None:
        """Envoy sends no bodies by default: the plugin asks for STREAMED, never BUFFERED."""
        host = PluginHost(BodyLogPlugin, {})
        step = host.request_headers({"content-type": "application/json"}, end_of_stream=False)
        assert mode_of(step)["request_body_mode"] == "STREAMED"
        assert mode_of(step)["response_body_mode"] == "STREAMED"

    def test_unlogged_request_body_is_not_streamed(self) -> None:
        """A request body of a type not logged is not asked for; the response still is."""
        host = PluginHost(BodyLogPlugin, {})
        step = host.request_headers(
            {"content-type": "application/octet-stream"}, end_of_stream=False
        )
        assert mode_of(step)["request_body_mode"] == "NONE"
        assert mode_of(step)["response_body_mode"] == "STREAMED"

    def test_buffered_mode(self) -> None:
        """Envoy in BUFFERED mode: the whole body in one piece, logged the same way."""
        host = PluginHost(
            BodyLogPlugin,
            {},
            protocol={
                "request_body_mode": BodySendMode.BUFFERED,
                "response_body_mode": BodySendMode.BUFFERED,
            },
        )
        r = run(
            host,
            request=[LOGIN],
            response=[b"ok"],
            request_headers=JSON,
            response_headers={"content-type": "text/plain"},
        )
        assert "[REDACTED]" in r.metadata["request_body"]
        assert r.metadata["response_body"] == "ok"
        assert r.request_forwarded == LOGIN
        assert not r.mutated

    def test_text_is_capped_at_max_bytes(self) -> None:
        """A text body over maxBytes: the first maxBytes, marked truncated, the full size
        counted; a character split by the cut is dropped, not mangled."""
        host = PluginHost(BodyLogPlugin, {"maxBytes": 10})
        body = "abcdefghi€uvwxyz".encode()  # the euro sign spans bytes 9-11
        r = run(host, request=chunks(body, 3), request_headers={"content-type": "text/plain"})
        assert r.metadata["request_body"] == "abcdefghi"
        assert r.metadata["request_body_truncated"] is True
        assert r.metadata["request_body_bytes"] == len(body)
        assert r.request_forwarded == body

    def test_json_inside_a_string_is_redacted_too(self) -> None:
        """An upstream that echoes the request as text (`{"body": "{\"password\": ...}"}`)
        must not put the password in the log; other strings stay as they are."""
        host = PluginHost(BodyLogPlugin, {})
        echoed = orjson.dumps(
            {
                "body": LOGIN.decode(),
                "list": [orjson.dumps([{"token": SECRET}]).decode()],
                "text": "{not json",
                "plain": "[1, 2]",
            }
        )
        r = run(host, response=chunks(echoed, 9), response_headers=JSON)
        assert r.response_forwarded == echoed
        logged = r.metadata["response_body"]
        assert SECRET not in logged
        doc = orjson.loads(logged)
        assert orjson.loads(doc["body"])["password"] == "[REDACTED]"
        assert orjson.loads(doc["list"][0]) == [{"token": "[REDACTED]"}]
        assert doc["text"] == "{not json" and doc["plain"] == "[1, 2]"

    def test_json_larger_than_max_bytes_is_redacted_then_cut(self) -> None:
        """A JSON body under redactLimit but over maxBytes: redacted whole, then cut."""
        host = PluginHost(BodyLogPlugin, {"maxBytes": 40})
        doc = orjson.dumps({"a": "x" * 30, "password": SECRET, "b": "y" * 30})
        r = run(host, request=chunks(doc, 16), request_headers=JSON)
        assert r.metadata["request_body"] == '{"a":"' + "x" * 30 + '","p'
        assert r.metadata["request_body_truncated"] is True

    def test_json_too_large_to_redact_is_not_logged(self) -> None:
        """A JSON body over redactLimit cannot be redacted: no body at all, only its size
        and why."""
        host = PluginHost(BodyLogPlugin, {"maxBytes": 16, "redactLimit": 64})
        doc = orjson.dumps({"password": SECRET, "pad": "z" * 100})
        r = run(host, request=chunks(doc, 10), request_headers=JSON)
        assert "request_body" not in r.metadata
        assert r.metadata["request_body_omitted"] == "too_large_to_redact"
        assert r.metadata["request_body_bytes"] == len(doc)
        bodies = "asm_proxy_plugin_body_log_bodies_total"
        assert host.metric(bodies, direction="request", result="too_large_to_redact") == 1

    def test_invalid_json_is_not_logged(self) -> None:
        """Declared JSON that does not parse might hide anything: not logged."""
        host = PluginHost(BodyLogPlugin, {})
        r = run(host, request=[b'{"password": "' + SECRET.encode() + b'"'], request_headers=JSON)
        assert r.metadata["request_body_omitted"] == "invalid_json"
        assert "request_body" not in r.metadata

    def test_without_redact_keys_json_is_plain_text(self) -> None:
        """redactKeys: [] logs JSON like any text (a prefix of a large one)."""
        host = PluginHost(BodyLogPlugin, {"redactKeys": [], "maxBytes": 12})
        r = run(host, request=[b'{"password": "x", "more": 1}'], request_headers=JSON)
        assert r.metadata["request_body"] == '{"password":'

    def test_form_bodies_are_redacted(self) -> None:
        """Form bodies: values of sensitive keys (even percent-encoded keys) redacted, the
        rest logged as written."""
        host = PluginHost(BodyLogPlugin, {})
        form = b"user=ada&pass%77ord=" + SECRET.encode() + b"&remember=on&token&x=%2F"
        r = run(
            host,
            request=chunks(form, 4),
            request_headers={"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        assert (
            r.metadata["request_body"] == "user=ada&pass%77ord=[REDACTED]&remember=on&token&x=%2F"
        )

    def test_binary_skipped_by_default(self) -> None:
        """A binary body of a configured type: size only."""
        host = PluginHost(BodyLogPlugin, {"contentTypes": ["application/octet-stream"]})
        r = run(
            host,
            request=[b"\x00\x01\xff" * 10],
            request_headers={"content-type": "application/octet-stream"},
        )
        assert r.metadata["request_body_omitted"] == "binary"
        assert r.metadata["request_body_bytes"] == 30

    def test_binary_as_base64(self) -> None:
        """binary: base64 logs the first maxBytes bytes base64-encoded; text that is not
        UTF-8 counts as binary."""
        host = PluginHost(
            BodyLogPlugin, {"binary": "base64", "maxBytes": 4, "contentTypes": ["*/*"]}
        )
        data = b"\x00\x01\xff\xfe\x10\x11"
        r = run(
            host,
            request=[data],
            request_headers={"content-type": "image/png"},
            response=[b"\xff\xfeok"],
            response_headers={"content-type": "text/plain"},
        )
        assert r.metadata["request_body"] == base64.b64encode(data[:4]).decode()
        assert r.metadata["request_body_encoding"] == "base64"
        assert r.metadata["request_body_truncated"] is True
        assert r.metadata["response_body"] == base64.b64encode(b"\xff\xfeok").decode()

    def test_compressed_bodies_are_binary(self) -> None:
        """A content-encoded body cannot be read: skipped, the encoding named."""
        host = PluginHost(BodyLogPlugin, {})
        r = run(
            host,
            response=[b"\x1f\x8b\x08junk"],
            response_headers={**JSON, "content-encoding": "gzip"},
        )
        assert r.metadata["response_body_omitted"] == "content_encoding"

    def test_unlisted_content_types_are_not_logged(self) -> None:
        """Only configured content types: an image response leaves no trace, and after the
        response headers the plugin is done (Envoy skips the response body)."""
        host = PluginHost(BodyLogPlugin, {})
        host.request_headers({":method": "GET"})
        step = host.response_headers({"content-type": "image/png"})
        assert mode_of(step)["response_body_mode"] == "NONE"
        assert step.metadata == {}

    def test_wildcards(self) -> None:
        """type/* and */*+suffix patterns."""
        host = PluginHost(BodyLogPlugin, {"contentTypes": ["application/*+json", "text/*"]})
        r = run(
            host,
            request=[b'{"token": "t"}'],
            request_headers={"content-type": "application/vnd.api+json"},
        )
        assert r.metadata["request_body"] == '{"token":"[REDACTED]"}'
        r = run(host, request=[b"<p>hi</p>"], request_headers={"content-type": "text/html"})
        assert r.metadata["request_body"] == "<p>hi</p>"
        r = run(host, request=[b"{}"], request_headers={"content-type": "application/json"})
        assert "request_body" not in r.metadata


class TestWhereTheBodyEnds:
    def test_trailers_end_the_body(self) -> None:
        """A body ended by trailers (no end_of_stream on a chunk) is logged at the trailers."""
        host = PluginHost(BodyLogPlugin, {})
        host.request_headers({":method": "POST", "content-type": "text/plain"}, end_of_stream=False)
        host.request_body(b"part one, ", end_of_stream=False)
        (step,) = host.request_trailers({"x-checksum": "1"})
        assert step.metadata["asm-proxy"]["request_body"] == "part one, "

    def test_partial_buffer_is_incomplete(self) -> None:
        """Envoy's BUFFERED_PARTIAL sent only a prefix: text is logged as truncated, JSON
        not at all (it cannot be redacted)."""
        protocol = {"request_body_mode": BodySendMode.BUFFERED_PARTIAL}
        host = PluginHost(BodyLogPlugin, {}, protocol=protocol)
        host.request_headers({":method": "POST", "content-type": "text/plain"}, end_of_stream=False)
        host.request_body(b"the first part", end_of_stream=False)
        step = host.response_headers({"content-type": "image/png"})
        md = step.metadata["asm-proxy"]
        assert (md["request_body"], md["request_body_truncated"]) == ("the first part", True)
        host.new_exchange()
        host.request_headers({":method": "POST", **JSON}, end_of_stream=False)
        host.request_body(b'{"password": "x"}', end_of_stream=False)
        step = host.response_headers({"content-type": "image/png"})
        assert step.metadata["asm-proxy"]["request_body_omitted"] == "incomplete"

    @pytest.mark.parametrize(
        ("method", "headers"),
        [
            ("HEAD", {":status": "200", **JSON}),
            ("GET", {":status": "204", **JSON}),
            ("GET", {":status": "200", "content-length": "0", **JSON}),
        ],
    )
    def test_responses_without_a_body(
        self, method: str, headers: dict[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """HEAD, 204 and content-length 0: logged at the response headers, empty."""
        caplog.set_level(logging.INFO, logger=LOGGER)
        host = PluginHost(BodyLogPlugin, {"request": False})
        host.request_headers({":method": method})
        step = host.response_headers(headers, end_of_stream=True)
        assert step.metadata["asm-proxy"]["response_body"] == ""
        assert len([r for r in caplog.records if r.name == LOGGER]) == 1

    def test_request_only(self, caplog: pytest.LogCaptureFixture) -> None:
        """response: false: the line is logged at the response headers; the response body
        is not asked for."""
        caplog.set_level(logging.INFO, logger=LOGGER)
        host = PluginHost(BodyLogPlugin, {"response": False})
        step = host.request_headers({":method": "POST", **JSON}, end_of_stream=False)
        assert mode_of(step)["response_body_mode"] == "NONE"
        host.request_body(b'{"a": 1}')
        step = host.response_headers(JSON)
        line = orjson.loads(caplog.records[-1].getMessage())
        assert line["request"]["body"] == '{"a":1}'
        assert "body" not in line["response"]


class TestLogLine:
    def test_headers_and_query_redacted(self, caplog: pytest.LogCaptureFixture) -> None:
        """Configured headers and sensitive query parameters are redacted in the line."""
        caplog.set_level(logging.INFO, logger=LOGGER)
        host = PluginHost(BodyLogPlugin, {})
        run(
            host,
            request=[b"{}"],
            request_headers={
                **JSON,
                ":path": f"/login?user=ada&access_token={SECRET}",
                "authorization": f"Bearer {SECRET}",
                "x-request-id": "req-1",
            },
            response=[b"{}"],
            response_headers={**JSON, "set-cookie": f"sid={SECRET}"},
        )
        line = orjson.loads(caplog.records[-1].getMessage())
        assert line["path"] == "/login?user=ada&access_token=[REDACTED]"
        assert line["request"]["headers"]["authorization"] == "[REDACTED]"
        assert line["response"]["headers"]["set-cookie"] == "[REDACTED]"
        assert line["request_id"] == "req-1"
        assert SECRET not in caplog.text

    def test_metadata_or_line_only(self, caplog: pytest.LogCaptureFixture) -> None:
        """metadata: false logs only the line; logLine: false only the metadata."""
        caplog.set_level(logging.INFO, logger=LOGGER)
        host = PluginHost(BodyLogPlugin, {"metadata": False})
        r = run(host, request=[b"{}"], request_headers=JSON)
        assert r.metadata == {}
        assert len(caplog.records) == 1
        host = PluginHost(BodyLogPlugin, {"logLine": False})
        r = run(host, request=[b"{}"], request_headers=JSON)
        assert r.metadata["request_body"] == "{}"
        assert len(caplog.records) == 1

    def test_sampling(self) -> None:
        """sampleRate 0: nothing, and Envoy is told to send nothing more; 0.25: about a
        quarter of exchanges."""
        host = PluginHost(BodyLogPlugin, {"sampleRate": 0})
        step = host.request_headers({":method": "POST", **JSON}, end_of_stream=False)
        assert mode_of(step)["request_body_mode"] == "NONE"
        assert mode_of(step)["response_header_mode"] == "SKIP"
        host = PluginHost(BodyLogPlugin, {"sampleRate": 0.25})
        plugin = host.chain.entries[0].plugin
        plugin.random.seed(7)
        logged = sum(
            "request_body" in run(host, request=[b"{}"], request_headers=JSON).metadata
            for _ in range(400)
        )
        assert 60 < logged < 140


class TestOddInput:
    def test_deeply_nested_json_is_not_logged(self) -> None:
        """JSON nested deeper than can be redacted and re-written: omitted, nothing raises."""
        host = PluginHost(BodyLogPlugin, {})
        doc = b'{"a":' * 600 + b"1" + b"}" * 600
        r = run(host, request=[doc], request_headers=JSON)
        assert r.metadata["request_body_omitted"] == "invalid_json"
        assert r.request_forwarded == doc

    def test_exchange_without_request_headers(self) -> None:
        """An exchange Envoy began with the response (no request headers seen): the plugin
        steps aside without failing."""
        host = PluginHost(BodyLogPlugin, {})
        step = host.response_headers(JSON)
        assert step.immediate is None
        assert mode_of(step)["response_body_mode"] == "NONE"


class TestCost:
    def test_past_the_cap_nothing_is_kept(self) -> None:
        """A long streamed body: the plugin keeps maxBytes, counts the rest."""
        host = PluginHost(BodyLogPlugin, {"maxBytes": 100})
        host.request_headers({":method": "POST", "content-type": "text/plain"}, end_of_stream=False)
        for _ in range(200):
            host.request_body(b"x" * 1000, end_of_stream=False)
        side = host.state().request
        assert (side.held, side.total, len(side.chunks)) == (100, 200_000, 1)
        (step,) = host.request_body(b"", end_of_stream=True)
        md = step.metadata["asm-proxy"]
        assert (md["request_body"], md["request_body_bytes"]) == ("x" * 100, 200_000)
        bodies = "asm_proxy_plugin_body_log_bodies_total"
        assert host.metric(bodies, direction="request", result="truncated") == 1
        assert host.metric(bodies, result="logged") == 0


class TestConfig:
    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"maxBytes": 100, "redactLimit": 10}, "redactLimit"),
            ({"sampleRate": 1.5}, "sampleRate"),
            ({"request": False, "response": False}, "nothing to log"),
            ({"metadata": False, "logLine": False}, "nowhere"),
            ({"contentTypes": ["json"]}, "not a media type"),
            ({"redactKeys": ["-"]}, "empty"),
            ({"binary": "hex"}, "skip"),
        ],
    )
    def test_bad_config_is_refused(self, config: dict[str, Any], message: str) -> None:
        """Impossible settings are refused at load time."""
        with pytest.raises(ValidationError, match=message):
            BodyLogPlugin.Config.model_validate(config)


# --------------------------------------------------------------------------------------
# Property-based: a secret under a sensitive key never reaches the log, however the body
# is cut, chunked or capped.

keys = st.text(min_size=1, max_size=8)
leaves = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10)
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)
sensitive = st.sampled_from(["password", "Token", "client_secret", "X-Api-Key", "sessionId"])


@st.composite
def with_secret(draw: st.DrawFn) -> bytes:
    """A JSON document with SECRET under a sensitive key somewhere inside."""
    doc = draw(documents)
    secret: Any = {draw(sensitive): draw(st.sampled_from([SECRET, [SECRET], {"v": SECRET}]))}
    path = draw(st.lists(st.sampled_from(["list", "dict"]), max_size=4))
    for step in path:
        secret = [secret] if step == "list" else {draw(keys): secret}
    merged = {"doc": doc, "data": secret} if draw(st.booleans()) else [secret, doc]
    return orjson.dumps(merged)


@given(with_secret(), st.integers(1, 64), st.integers(0, 300), st.integers(0, 300))
def test_secrets_never_logged(body: bytes, chunk: int, max_bytes: int, extra: int) -> None:
    """Whatever the chunking, maxBytes and redactLimit, the secret never appears."""
    host = PluginHost(BodyLogPlugin, {"maxBytes": max_bytes, "redactLimit": max_bytes + extra})
    host.chain.entries[0].plugin.log = logging.getLogger("test.body_log.silent")
    r = run(host, request=chunks(body, chunk), request_headers=JSON)
    assert r.request_forwarded == body
    logged = orjson.dumps(r.metadata).decode()
    assert SECRET not in logged
    if "request_body" in r.metadata and not r.metadata["request_body_truncated"]:
        orjson.loads(r.metadata["request_body"])  # whole: still a JSON document


@given(st.binary(max_size=200), st.integers(1, 50), st.integers(0, 100))
def test_any_body_is_forwarded_unchanged(body: bytes, chunk: int, max_bytes: int) -> None:
    """Any bytes under any declared type pass through unchanged and never raise."""
    host = PluginHost(
        BodyLogPlugin, {"maxBytes": max_bytes, "contentTypes": ["*/*"], "binary": "base64"}
    )
    host.chain.entries[0].plugin.log = logging.getLogger("test.body_log.silent")
    for content_type in (
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "x/y",
    ):
        r = run(host, request=chunks(body, chunk), request_headers={"content-type": content_type})
        assert r.request_forwarded == body
        assert r.metadata["request_body_bytes"] == len(body)


@given(st.text(max_size=50), st.integers(0, 60))
def test_cut_utf8_is_a_prefix(text: str, limit: int) -> None:
    """The cut text is always a prefix of the original, at most `limit` bytes."""
    data = text.encode()
    out, cut = cut_utf8(data, limit)
    assert out is not None
    assert text.startswith(out)
    assert len(out.encode()) <= limit
    assert cut == (len(data) > limit)


@given(st.text(max_size=60))
def test_form_redaction_hides_sensitive_values(extra: str) -> None:
    """Any form text with a password pair appended: its value never survives."""
    redactor = Redactor(["password"])
    out = redactor.form(extra + "&password=" + SECRET)
    assert SECRET not in out
