"""The floor: a bare grpc.aio ext_proc server that adds one request header. No framework.

Written the way the grpc.aio examples write a bidirectional stream (`async for` over the
requests, `yield` a response for each), answering every message Envoy may send, so it works
under any processing mode. It uses asm-proxy's message classes (the same upb parsing any
generated Envoy API module does) and registers the method the way generated code does.
asm-proxy's CPU per request is compared with this one's under the same Envoy config.

    python -m perf.floor --listen 127.0.0.1:0     # prints "floor serving on ADDRESS"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from asm_proxy.wire import EXT_PROC_SERVICE
from asm_proxy.wire import core as base_pb2
from asm_proxy.wire import ext_proc as pb


class Floor:
    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                header = base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="x-floor", raw_value=b"1")
                )
                yield pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(
                        response=pb.CommonResponse(
                            header_mutation=pb.HeaderMutation(set_headers=[header])
                        )
                    )
                )
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "request_body":
                yield pb.ProcessingResponse(request_body=pb.BodyResponse())
            elif kind == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    server.add_registered_method_handlers(
        EXT_PROC_SERVICE,
        {
            "Process": grpc.stream_stream_rpc_method_handler(
                Floor().Process,
                request_deserializer=pb.ProcessingRequest.FromString,
                response_serializer=pb.ProcessingResponse.SerializeToString,
            )
        },
    )
    port = server.add_insecure_port(listen)
    await server.start()
    address = listen if listen.startswith("unix:") else f"{listen.rpartition(':')[0]}:{port}"
    print(f"floor serving on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.floor")
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
