"""Bare ext_proc servers on other HTTP/2 engines: the candidates' floors.

Each answers every ProcessingRequest exactly as `perf.floor` does (one header added to the
request headers, an empty answer of the right kind to anything else) with no framework at
all, so the difference between them is the engine's per-stream and per-message cost:

- `h2`: the pure-Python `h2` state machine under an asyncio protocol (uvloop);
- `nghttp2`: asm-proxy's own C session (`asm_proxy.transport.nghttp2._h2`) under the same.

    python -m perf.floors h2 --listen unix:/tmp/x.sock   # prints "floor serving on ADDRESS"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import struct
from typing import Any

from asm_proxy.wire import core as base_pb2
from asm_proxy.wire import ext_proc as pb

_ADD_HEADER = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="x-floor", raw_value=b"1")
                    )
                ]
            )
        )
    )
)
_EMPTY = {
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}


def answer(data: bytes) -> bytes:
    """What the grpc.aio floor answers, serialized (built per message, as it does)."""
    request = pb.ProcessingRequest.FromString(data)
    kind = request.WhichOneof("request")
    if kind == "request_headers":
        reply = pb.ProcessingResponse()
        reply.CopyFrom(_ADD_HEADER)
        return reply.SerializeToString()
    return _EMPTY[kind or "request_body"].SerializeToString()


class H2Floor(asyncio.Protocol):
    """The pure-Python h2 library: every frame parsed and built in Python."""

    def __init__(self) -> None:
        import h2.config
        import h2.connection

        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.buffers: dict[int, bytes] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        import h2.settings

        self.transport = transport
        self.conn.initiate_connection()
        # h2 allows 100 streams by default; Envoy (and the RSS probe) may open more.
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 10_000})
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        conn = self.conn
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.buffers[event.stream_id] = b""
                conn.send_headers(
                    event.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                )
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                buf = self.buffers.get(event.stream_id, b"") + event.data
                while len(buf) >= 5:
                    (size,) = struct.unpack(">I", buf[1:5])
                    if len(buf) < 5 + size:
                        break
                    out = answer(buf[5 : 5 + size])
                    buf = buf[5 + size :]
                    conn.send_data(event.stream_id, struct.pack(">BI", 0, len(out)) + out)
                self.buffers[event.stream_id] = buf
            elif isinstance(event, h2.events.StreamEnded):
                self.buffers.pop(event.stream_id, None)
                conn.send_headers(event.stream_id, [(b"grpc-status", b"0")], end_stream=True)
            elif isinstance(event, h2.events.StreamReset):
                self.buffers.pop(event.stream_id, None)
        self.transport.write(conn.data_to_send())


class Nghttp2Floor(asyncio.Protocol):
    """asm-proxy's C session: HTTP/2 and gRPC framing in C, one event list per read."""

    def __init__(self) -> None:
        from asm_proxy.transport.nghttp2 import native

        self.native = native
        self.session = native.Session()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.session.pending())

    def data_received(self, data: bytes) -> None:
        native, session = self.native, self.session
        for event in session.receive(data):
            kind = event[0]
            if kind == native.MESSAGE:
                session.send_message(event[1], answer(event[2]))
            elif kind == native.END:
                session.finish(event[1], 0, b"")
        self.transport.write(session.pending())
        session.take()


FLOORS = {"h2": H2Floor, "nghttp2": Nghttp2Floor}


async def serve(kind: str, listen: str) -> None:
    loop = asyncio.get_running_loop()
    factory = FLOORS[kind]
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await loop.create_unix_server(factory, path)
        address = listen
    else:
        host, _, port = listen.rpartition(":")
        server = await loop.create_server(factory, host, int(port))
        address = f"{host}:{server.sockets[0].getsockname()[1]}"
    print(f"floor serving on {address}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.floors")
    parser.add_argument("kind", choices=sorted(FLOORS))
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.kind, args.listen))


if __name__ == "__main__":
    main()
