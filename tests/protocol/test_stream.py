"""The ext_proc protocol, message by message, in the vocabulary of Envoy's ordering tests."""

from __future__ import annotations

import pytest

from asm_proxy.api import Chunk, Http, Plugin
from asm_proxy.config import ServerSettings
from asm_proxy.stats import counters
from asm_proxy.status import Code
from asm_proxy.stream import ProtocolError
from asm_proxy.testing import PluginHost, messages, mode_of
from asm_proxy.wire import BodySendMode, ext_proc
from tests.support.plugins import ChunkUpper, Recorder, SetMetadata, TrailerTouch, UpperBody

BUFFERED = BodySendMode.BUFFERED
BUFFERED_PARTIAL = BodySendMode.BUFFERED_PARTIAL
STREAMED = BodySendMode.STREAMED
FULL_DUPLEX = BodySendMode.FULL_DUPLEX_STREAMED

GET = [(":method", "GET"), (":path", "/"), (":authority", "example.com")]
POST = [(":method", "POST"), (":path", "/"), (":authority", "example.com"), ("content-length", "5")]


def kinds(steps) -> list[str]:
    return [s.kind for s in steps]


class TestOneReplyPerMessage:
    @pytest.mark.parametrize(
        "msg",
        [
            messages.request_headers(GET),
            messages.request_body(b"x"),
            messages.request_trailers([("x", "1")]),
            messages.response_headers([(":status", "200")]),
            messages.response_body(b"x"),
            messages.response_trailers([("x", "1")]),
        ],
        ids=lambda m: m.WhichOneof("request"),
    )
    def test_matching_kind(self, msg) -> None:
        """Each message kind gets exactly one reply of its own kind (an empty chain)."""
        host = PluginHost(Recorder)
        (step,) = host.send(msg)
        assert step.kind == msg.WhichOneof("request")

    def test_full_exchange(self) -> None:
        """A whole exchange with every phase: six messages, six matching replies."""
        host = PluginHost(
            Recorder, protocol={"request_body_mode": BUFFERED, "response_body_mode": BUFFERED}
        )
        replies = []
        replies += host.send(messages.request_headers(POST))
        replies += host.send(messages.request_body(b"hello", end_of_stream=False))
        replies += host.send(messages.request_trailers([("t", "1")]))
        replies += host.send(messages.response_headers([(":status", "200")]))
        replies += host.send(messages.response_body(b"world", end_of_stream=False))
        replies += host.send(messages.response_trailers([("t", "2")]))
        assert kinds(replies) == [
            "request_headers",
            "request_body",
            "request_trailers",
            "response_headers",
            "response_body",
            "response_trailers",
        ]
        plugin = host.chain.entries[0].plugin
        assert dict(plugin.calls) == {e.hook.removeprefix("on_"): 1 for e in Recorder.hooks}

    def test_observability_mode_sends_nothing(self) -> None:
        """In observability mode hooks run but no reply is sent."""
        host = PluginHost(Recorder)
        assert host.send(messages.request_headers(GET, observability=True)) == []
        assert host.send(messages.request_body(b"x", observability=True)) == []
        assert host.chain.entries[0].plugin.calls["request_headers"] == 1


class TestProtocolErrors:
    def _error(self, host: PluginHost, *msgs) -> ProtocolError:
        with pytest.raises(ProtocolError) as info:
            for msg in msgs:
                host.send(msg)
        return info.value

    def test_empty_message(self) -> None:
        """A ProcessingRequest with nothing set is INVALID_ARGUMENT, saying so."""
        err = self._error(PluginHost(Recorder), ext_proc.ProcessingRequest())
        assert err.code is Code.INVALID_ARGUMENT
        assert "no known message" in err.message

    def test_headers_twice(self) -> None:
        """Request headers twice is out of order."""
        err = self._error(
            PluginHost(Recorder), messages.request_headers(GET), messages.request_headers(GET)
        )
        assert err.code is Code.FAILED_PRECONDITION
        assert err.message == "request_headers received after request headers on this stream"

    def test_body_after_trailers(self) -> None:
        """No body after the trailers of the same direction."""
        err = self._error(
            PluginHost(Recorder),
            messages.response_headers([(":status", "200")]),
            messages.response_trailers([("a", "b")]),
            messages.response_body(b"late"),
        )
        assert "response_body received after the response trailers" in err.message

    def test_body_after_end_of_stream(self) -> None:
        """No body after a body that said end_of_stream."""
        err = self._error(
            PluginHost(Recorder),
            messages.request_headers(POST),
            messages.request_body(b"a", end_of_stream=True),
            messages.request_body(b"b"),
        )
        assert "after the request end_of_stream" in err.message

    def test_trailers_twice(self) -> None:
        """Trailers come once."""
        err = self._error(
            PluginHost(Recorder),
            messages.request_trailers([("a", "1")]),
            messages.request_trailers([("a", "1")]),
        )
        assert err.message == "request_trailers received twice on this stream"

    def test_early_response_is_fine(self) -> None:
        """Response headers may arrive while the request body still streams."""
        host = PluginHost(ChunkUpper, protocol={"request_body_mode": STREAMED})
        host.send(messages.request_headers(POST))
        host.send(messages.request_body(b"a", end_of_stream=False))
        host.send(messages.response_headers([(":status", "200")]))
        (step,) = host.send(messages.request_body(b"b", end_of_stream=True))
        assert step.body == b"B"


class TestBufferedBodies:
    def test_replace_fixes_content_length(self) -> None:
        """In BUFFERED mode a new body comes with the matching content-length."""
        host = PluginHost(UpperBody, {"suffix": "!"}, protocol={"request_body_mode": BUFFERED})
        host.send(messages.request_headers(POST))
        (step,) = host.send(messages.request_body(b"hello", end_of_stream=True))
        assert step.body == b"HELLO!"
        assert step.headers["content-length"] == "6"

    def test_no_content_length_added_when_chunked(self) -> None:
        """A request without content-length does not get one."""
        host = PluginHost(UpperBody, protocol={"request_body_mode": BUFFERED})
        host.send(messages.request_headers([(":method", "POST"), (":path", "/")]))
        (step,) = host.send(messages.request_body(b"hello", end_of_stream=True))
        assert "content-length" not in step.headers
        assert step.raw.request_body.response.HasField("header_mutation") is False

    def test_unchanged_body_is_not_sent_back(self) -> None:
        """A body no plugin changed is answered with a bare continue."""
        host = PluginHost(Recorder, protocol={"request_body_mode": BUFFERED})
        host.send(messages.request_headers(POST))
        (step,) = host.send(messages.request_body(b"hello"))
        assert step.raw == ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse())

    def test_partial_body_is_marked_incomplete(self) -> None:
        """BUFFERED_PARTIAL past the limit: the plugin sees complete=False."""
        host = PluginHost(UpperBody, protocol={"request_body_mode": BUFFERED_PARTIAL})
        host.send(messages.request_headers(POST))
        host.send(messages.request_body(b"prefix", end_of_stream=False))
        assert host.chain.entries[0].plugin.seen == [("request", 6, 1, False)]

    def test_whole_body_hook_on_bodyless_message(self) -> None:
        """A message with no body still runs whole-body hooks; a new body is added with
        CONTINUE_AND_REPLACE."""
        host = PluginHost(UpperBody, {"suffix": "added"})
        host.send(messages.request_headers(GET))
        step = host.response_headers([(":status", "204")], end_of_stream=True)
        assert step.status == ext_proc.CommonResponse.CONTINUE_AND_REPLACE
        assert step.body == b"added"


class TestStreamedBodies:
    def test_each_chunk_rewritten(self) -> None:
        """Chunk hooks rewrite every chunk as it passes."""
        host = PluginHost(ChunkUpper, protocol={"request_body_mode": STREAMED})
        host.send(messages.request_headers(POST))
        bodies = [
            host.send(messages.request_body(c, end_of_stream=e))[0].body
            for c, e in [(b"ab", False), (b"cd", True)]
        ]
        assert bodies == [b"AB", b"CD"]

    def test_whole_body_hooks_only_observe(self) -> None:
        """With Envoy streaming, a whole-body plugin sees the complete body at the end;
        its replacement is dropped (the chunks are gone)."""
        host = PluginHost(
            UpperBody,
            protocol={"request_body_mode": STREAMED},
            settings=ServerSettings(mode_override=False),
        )
        host.send(messages.request_headers(POST))
        first = host.send(messages.request_body(b"ab", end_of_stream=False))
        last = host.send(messages.request_body(b"cd", end_of_stream=True))
        assert [s.body_mutated for s in first + last] == [False, False]
        assert host.chain.entries[0].plugin.seen == [("request", 4, 2, True)]

    def test_override_ignored_is_detected(self) -> None:
        """Asked for BUFFERED but sent pieces: the first piece is not taken for a complete
        body (nothing is rewritten), the stream falls back to streaming, and the
        whole-body hook does not run twice."""
        host = PluginHost(UpperBody, protocol={"request_body_mode": STREAMED})
        step = host.send(messages.request_headers(POST))[0]
        assert mode_of(step)["request_body_mode"] == "BUFFERED"
        (first,) = host.send(messages.request_body(b"ab", end_of_stream=False))
        (second,) = host.send(messages.request_body(b"cd", end_of_stream=True))
        assert (first.body_mutated, second.kind, second.body_mutated) == (
            False,
            "request_body",
            False,
        )
        assert host.chain.entries[0].plugin.seen == [("request", 2, 1, False)]

    def test_static_buffered_with_trailers_is_complete(self) -> None:
        """Envoy configured for BUFFERED: a body without end_of_stream is complete (trailers
        follow) and can be rewritten."""
        host = PluginHost(UpperBody, protocol={"request_body_mode": BUFFERED})
        host.send(messages.request_headers(POST))
        (step,) = host.send(messages.request_body(b"hello", end_of_stream=False))
        assert step.body == b"HELLO"


class TestFullDuplex:
    def test_chunks_answered_as_they_come(self) -> None:
        """Without whole-body hooks each chunk goes straight back as a StreamedBodyResponse."""
        host = PluginHost(ChunkUpper, protocol={"request_body_mode": FULL_DUPLEX})
        step = host.send(messages.request_headers(POST))[0]
        assert mode_of(step)["request_body_mode"] == "FULL_DUPLEX_STREAMED"
        assert mode_of(step)["request_trailer_mode"] == "SEND"
        (a,) = host.send(messages.request_body(b"ab", end_of_stream=False))
        (b,) = host.send(messages.request_body(b"cd", end_of_stream=True))
        assert (
            a.body,
            a.raw.request_body.response.body_mutation.streamed_response.end_of_stream,
        ) == (b"AB", False)
        assert (
            b.body,
            b.raw.request_body.response.body_mutation.streamed_response.end_of_stream,
        ) == (b"CD", True)

    def test_whole_body_held_until_complete(self) -> None:
        """With a whole-body hook the chunks are held, then the new body is sent once."""
        host = PluginHost(UpperBody, protocol={"request_body_mode": FULL_DUPLEX})
        host.send(messages.request_headers(POST))
        assert host.send(messages.request_body(b"ab", end_of_stream=False)) == []
        (step,) = host.send(messages.request_body(b"cd", end_of_stream=True))
        assert step.body == b"ABCD"
        assert step.raw.request_body.response.body_mutation.streamed_response.end_of_stream

    def test_trailers_end_the_held_body(self) -> None:
        """Trailers complete a held body: body replies first, then the trailers reply."""
        host = PluginHost.from_yaml(
            "plugins:\n"
            " - {name: up, type: 'tests.support.plugins:UpperBody'}\n"
            " - {name: tr, type: 'tests.support.plugins:TrailerTouch'}\n",
            protocol={"request_body_mode": FULL_DUPLEX},
        )
        host.send(messages.request_headers(POST))
        assert host.send(messages.request_body(b"ab", end_of_stream=False)) == []
        steps = host.send(messages.request_trailers([("x-t", "1")]))
        assert kinds(steps) == ["request_body", "request_trailers"]
        assert steps[0].body == b"AB"
        assert not steps[0].raw.request_body.response.body_mutation.streamed_response.end_of_stream
        assert steps[1].trailers is not None and steps[1].trailers["x-trailer-seen"] == "1"


class TestPhasesOnDemand:
    def test_not_asked_when_overrides_are_off(self) -> None:
        """modeOverride: false sends no mode_override."""
        host = PluginHost(Recorder, settings=ServerSettings(mode_override=False))
        assert host.send(messages.request_headers(GET))[0].mode_override is None

    def test_not_asked_when_envoy_would_ignore_it(self) -> None:
        """send_body_without_waiting_for_header_response makes Envoy ignore mode_override."""
        host = PluginHost(
            Recorder, protocol={"send_body_without_waiting_for_header_response": True}
        )
        assert host.send(messages.request_headers(GET))[0].mode_override is None

    def test_chunk_plugins_get_streamed(self) -> None:
        """Chunk-only plugins never make Envoy buffer."""
        step = PluginHost(ChunkUpper).send(messages.request_headers(POST))[0]
        assert mode_of(step)["request_body_mode"] == "STREAMED"
        assert mode_of(step)["response_body_mode"] == "STREAMED"

    def test_operator_choice_of_partial_buffering_is_kept(self) -> None:
        """A whole-body plugin under BUFFERED_PARTIAL keeps the operator's limit."""
        step = PluginHost(UpperBody, protocol={"request_body_mode": BUFFERED_PARTIAL}).send(
            messages.request_headers(POST)
        )[0]
        assert mode_of(step)["request_body_mode"] == "BUFFERED_PARTIAL"

    def test_counted(self) -> None:
        """mode_override use is counted."""
        before = counters.mode_overrides
        PluginHost(Recorder).send(messages.request_headers(GET))
        assert counters.mode_overrides == before + 1


class TestRoutingAndMetadata:
    def test_authority_change_clears_route_cache(self) -> None:
        """Changing :authority re-routes: clear_route_cache with the header mutation."""

        class Host(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.request.authority = "other.local:8080"

        step = PluginHost(Host).request_headers()
        assert step.clear_route_cache
        assert step.headers[":authority"] == "other.local:8080"

    def test_other_header_change_keeps_route(self) -> None:
        """Ordinary header changes do not clear the route cache."""
        step = PluginHost(SetMetadata, {"values": {"a": "b"}}).request_headers()
        assert not step.clear_route_cache

    def test_explicit_clear_route_cache(self) -> None:
        """http.clear_route_cache() alone still reaches Envoy (with an empty header_mutation)."""

        class Clear(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.clear_route_cache()

        step = PluginHost(Clear).request_headers()
        assert step.clear_route_cache
        assert step.raw.request_headers.response.HasField("header_mutation")

    def test_metadata_under_the_namespace(self) -> None:
        """Metadata goes under the server's namespace, or the one the plugin names."""

        class Meta(Plugin):
            def on_request_headers(self, http: Http) -> None:
                http.set_metadata("user", "alice")
                http.set_metadata("subset", "v2", namespace="envoy.lb")

        step = PluginHost(Meta, settings=ServerSettings(metadata_namespace="asm")).request_headers()
        assert step.metadata == {"asm": {"user": "alice"}, "envoy.lb": {"subset": "v2"}}

    def test_attributes_and_metadata_context(self) -> None:
        """Envoy attributes and forwarded metadata reach plugins as plain dicts."""
        seen = {}

        class Look(Plugin):
            def on_request_headers(self, http: Http) -> None:
                seen.update(attributes=dict(http.attributes), metadata=dict(http.metadata))

        host = PluginHost(Look)
        msg = messages.request_headers(
            GET, end_of_stream=True, attributes={"source.address": "10.0.0.1:5555"}
        )
        msg.metadata_context.filter_metadata["envoy.lb"].update({"canary": True})
        host.send(msg)
        assert seen == {
            "attributes": {"source.address": "10.0.0.1:5555"},
            "metadata": {"envoy.lb": {"canary": True}},
        }


class TestTrailers:
    def test_trailer_changes(self) -> None:
        """Trailer hooks read and change trailers; the reply carries the mutation."""
        host = PluginHost(TrailerTouch)
        host.send(messages.request_headers(POST))
        (step,) = host.send(messages.request_trailers([("grpc-status", "0"), ("x-a", "b")]))
        assert step.trailers is not None and step.trailers["x-trailer-seen"] == "2"


class SpyPlugin(Plugin):
    """Records the chunks it is handed."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.seen: list[bytes] = []

    def on_request_body_chunk(self, http: Http, chunk: Chunk) -> None:
        self.seen.append(chunk.data)


def test_chunk_hook_sees_previous_replacement() -> None:
    """Chunk hooks chain: each sees the chunk as the previous one left it."""
    host = PluginHost.from_yaml(
        "plugins:\n - {name: up, type: 'tests.support.plugins:ChunkUpper'}\n"
        " - {name: spy, type: 'tests.protocol.test_stream:SpyPlugin'}\n",
        protocol={"request_body_mode": STREAMED},
    )
    host.send(messages.request_headers(POST))
    host.send(messages.request_body(b"abc"))
    assert host.chain.entries[1].plugin.seen == [b"ABC"]
