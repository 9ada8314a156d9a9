"""The HTTP/2 and gRPC layer of each transport, frame by frame and under h2load.

A client built on the `h2` library sends what Envoy would and what it should not: resets,
pings, broken gRPC framing, unknown methods, a non-gRPC request, a GOAWAY on stop. h2load
(nghttp2's load tool) drives thousands of streams with small flow-control windows.
asm-proxy's own transport (nghttp2) is held to every answer gRPC specifies; grpc.aio runs
the h2load check too, as the reference.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import hyperframe.frame
import pytest

from asm_proxy.testing import messages
from asm_proxy.wire import PROCESS_METHOD, ProcessingResponse, process_stub
from tests.support.background import ServerThread
from tests.support.waiting import wait_for

CONFIG = """
maxConcurrentStreams: 50
maxMessageBytes: 1048576
plugins:
  - {name: tag, type: headers, config: {request: {set: {x-tag: '1'}}}}
  - {name: upper, type: 'tests.support.plugins:UpperBody', match: [{paths: [{prefix: /body}]}]}
"""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "asm-proxy"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def frame(message: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def headers_message(path: str, end: bool) -> bytes:
    return messages.request_headers([(":path", path), (":method", "POST")], end).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = Path(tmp_path_factory.mktemp("h2")) / "config.yaml"
    path.write_text(CONFIG)
    thread = ServerThread(path, transport="nghttp2")
    yield thread
    thread.stop()


class Client:
    """One HTTP/2 connection, driven by hand."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.flush()
        self.events: list[h2.events.Event] = []

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def receive(self) -> list[h2.events.Event]:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        events = self.h2.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        self.events += events
        return events

    def until(self, kind: type, stream_id: int | None = None) -> h2.events.Event:
        for _ in range(200):
            for event in self.events:
                if isinstance(event, kind) and (
                    stream_id is None or getattr(event, "stream_id", None) == stream_id
                ):
                    self.events.remove(event)
                    return event
            self.receive()
        raise AssertionError(f"no {kind.__name__}")

    def call(self, path: str, body: bytes, end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(":path", path), *GRPC_HEADERS])
        self.h2.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id

    def trailers(self, stream_id: int) -> dict[str, str]:
        """The call's status trailers (or the headers of a Trailers-Only answer)."""
        for _ in range(200):
            for event in self.events:
                if (
                    isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived))
                    and event.stream_id == stream_id
                ):
                    fields = {k.decode(): v.decode() for k, v in event.headers}
                    if "grpc-status" in fields:
                        return fields
            self.receive()
        raise AssertionError("no grpc-status")

    def messages(self, stream_id: int) -> list[bytes]:
        data = b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )
        out = []
        while data:
            _, size = struct.unpack(">BI", data[:5])
            out.append(data[5 : 5 + size])
            data = data[5 + size :]
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    c = Client(server.address)
    yield c
    c.close()


def test_settings_advertise_the_stream_limit(client: Client) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS is maxConcurrentStreams; pings are answered."""
    client.until(h2.events.RemoteSettingsChanged)
    limit = client.h2.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
    assert limit == 50
    client.h2.ping(b"12345678")
    client.flush()
    ack = client.until(h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"


def test_streams_beyond_the_limit_are_refused(server: ServerThread) -> None:
    """With maxConcurrentStreams (50) streams open, the next is refused with RST_STREAM
    REFUSED_STREAM (a client may retry it); those open are not disturbed."""
    host, _, port = server.address.rpartition(":")
    encoder = hpack.Encoder()
    frames = [hyperframe.frame.SettingsFrame(0)]
    for n in range(51):
        headers = hyperframe.frame.HeadersFrame(2 * n + 1)
        headers.data = encoder.encode([(":path", PROCESS_METHOD), *GRPC_HEADERS])
        headers.flags.add("END_HEADERS")
        frames.append(headers)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(PREFACE)
        sock.sendall(b"".join(f.serialize() for f in frames))
        data = b""
        resets: list[tuple[int, int]] = []
        give_up = time.monotonic() + 5
        while not resets and time.monotonic() < give_up:
            data += sock.recv(65536)
            while len(data) >= 9:
                frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
                if len(data) < 9 + length:
                    break
                frame.parse_body(memoryview(data[9 : 9 + length]))
                data = data[9 + length :]
                if isinstance(frame, hyperframe.frame.RstStreamFrame):
                    resets.append((frame.stream_id, frame.error_code))
    assert resets == [(101, 7)]  # the 51st stream, REFUSED_STREAM


def test_an_exchange_ends_with_its_status_in_trailers(client: Client) -> None:
    """Response headers, one message, then grpc-status 0 as trailers."""
    stream_id = client.call(PROCESS_METHOD, frame(headers_message("/x", True)))
    assert client.trailers(stream_id)["grpc-status"] == "0"
    (answer,) = client.messages(stream_id)
    reply = ProcessingResponse.FromString(answer)
    assert reply.request_headers.response.header_mutation.set_headers[0].header.key == "x-tag"


def test_a_reset_stream_does_not_disturb_the_connection(client: Client) -> None:
    """The client resets a stream the server still waits on; the next stream is served."""
    open_id = client.call(PROCESS_METHOD, frame(headers_message("/body", False)), end=False)
    client.until(h2.events.DataReceived, open_id)  # the headers' answer; the body is due
    client.h2.reset_stream(open_id)
    client.flush()
    stream_id = client.call(PROCESS_METHOD, frame(headers_message("/x", True)))
    assert client.trailers(stream_id)["grpc-status"] == "0"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (frame(b"\x08\x01", compressed=True), "12", "compressed"),
        (struct.pack(">BI", 0, 2 * 1024 * 1024), "8", "larger than the limit"),
        (frame(headers_message("/x", True))[:-3], "13", "inside a gRPC message"),
        (frame(b"\xff\xff\xff"), "3", "not an envoy.service.ext_proc.v3.ProcessingRequest: "),
    ],
    ids=["compressed", "too-large", "truncated", "garbage"],
)
def test_broken_grpc_framing_is_a_status_not_a_hang(
    client: Client, body: bytes, status: str, says: str
) -> None:
    """Each misuse ends its call with the gRPC status for it and a message saying why."""
    stream_id = client.call(PROCESS_METHOD, body)
    fields = client.trailers(stream_id)
    assert fields["grpc-status"] == status
    assert says in fields["grpc-message"]


def test_unknown_method_and_plain_http(client: Client) -> None:
    """An unknown gRPC method is UNIMPLEMENTED; a non-gRPC request on the gRPC port is 415."""
    stream_id = client.call("/no.such.Service/Call", frame(b""))
    fields = client.trailers(stream_id)
    assert fields["grpc-status"] == "12" and "/no.such.Service/Call" in fields["grpc-message"]
    plain = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        plain,
        [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    client.flush()
    response = client.until(h2.events.ResponseReceived, plain)
    assert dict(response.headers)[b":status"] == b"415"


def test_unary_check_takes_one_message(client: Client) -> None:
    """Two request messages on a unary method end the call with INVALID_ARGUMENT."""
    stream_id = client.call("/envoy.service.auth.v3.Authorization/Check", frame(b"") + frame(b""))
    assert client.trailers(stream_id)["grpc-status"] == "3"


def _raw(server: ServerThread, data: bytes) -> bytes:
    host, _, port = server.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def test_a_connection_that_is_not_http2_is_http1(server: ServerThread) -> None:
    """Without HTTP/2's preface a connection is HTTP/1.1 (Envoy's ext_authz http_service):
    /healthz answers, other paths are 404, bytes that are not HTTP get 400 and a close;
    the server serves HTTP/2 on."""
    health = _raw(server, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 ") and health.endswith(b"SERVING\n")
    other = _raw(server, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert other.startswith(b"HTTP/1.1 404 ")
    garbage = _raw(server, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    c = Client(server.address)
    try:
        stream_id = c.call(PROCESS_METHOD, frame(headers_message("/x", True)))
        assert c.trailers(stream_id)["grpc-status"] == "0"
    finally:
        c.close()


SLOW = """
deadline: 2s
plugins:
  - {name: pid, type: 'tests.support.workers:PidTag', config: {delayMs: 500}}
"""


def test_stop_sends_goaway_and_lets_streams_in_flight_finish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On stop every connection gets GOAWAY (NO_ERROR); a call in flight is still answered."""
    path = tmp_path / "config.yaml"
    path.write_text(SLOW)
    server = ServerThread(path, transport="nghttp2")
    idle = Client(server.address)
    try:
        with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(1) as pool:
            msg = messages.request_headers([(":path", "/slow"), (":method", "GET")], True)
            call = pool.submit(lambda: list(process_stub(channel)(iter([msg]), timeout=10)))
            # The call is in flight: in the plugin's sleep (which it logs first).
            wait_for(lambda: "slow request started" in caplog.text, "the call in the plugin", 10)
            stopping = asyncio.run_coroutine_threadsafe(
                server.server.stop(grace=5), server._bg.loop
            )
            goaway = idle.until(h2.events.ConnectionTerminated)
            assert goaway.error_code == 0
            replies = call.result(10)
            stopping.result(10)
    finally:
        idle.close()
        server._bg.close()
    assert len(replies) == 1
    assert replies[0].request_headers.response.header_mutation.set_headers


H2LOAD = shutil.which("h2load")


@pytest.mark.parametrize("window_bits", [16, 30])
def test_h2load_thousands_of_calls(tmp_path: Path, transport: str, window_bits: int) -> None:
    """h2load sends 2,000 ext_proc calls, 20 at a time on 4 connections, each carrying a
    100 KiB body message (flow control at a 64 KiB window, and at 1 GiB): every one is
    answered 200 with its trailers."""
    assert H2LOAD, "h2load is missing (apt-get install nghttp2-client; scripts/setup does it)"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    server = ServerThread(config, transport=transport)
    body = tmp_path / "body"
    payload = headers_message("/body", False)
    chunk = messages.request_body(b"a" * 100_000, True).SerializeToString()
    body.write_bytes(frame(payload) + frame(chunk))
    try:
        done = subprocess.run(
            [
                H2LOAD,
                "-n2000",
                "-c4",
                "-m5",
                f"-w{window_bits}",
                f"-W{window_bits}",
                "-d",
                str(body),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{server.address}{PROCESS_METHOD}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    requests = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        out,
    )
    assert requests, out
    assert requests.groups() == ("2000", "2000", "2000", "0", "0"), out
    assert re.search(r"status codes: (\d+) 2xx", out).group(1) == "2000", out
