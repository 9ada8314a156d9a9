"""What every transport serves, in bytes and statuses: the seam between them and asm-proxy.

A transport moves serialized messages and reports how calls end; it knows nothing of
plugins, chains or Envoy's messages. `Services` holds the rest:

- `process(call)`: one ext_proc stream. Messages are read and answered one by one through
  the ext_proc state machine (`stream.Stream`) until Envoy ends the stream or nothing more
  is needed; the returned `Status` is how the transport must end it (OK, the protocol
  misuse with its message, or INTERNAL).
- `check(request, call)`: one ext_authz Check: the serialized CheckResponse, or the status
  to end the call with.
- `health`: grpc.health.v1 (`health.Health`).

`METHODS` names every gRPC method by path, and what kind of call it is, so a transport
can route and refuse (UNIMPLEMENTED) without importing anything else.
"""

from __future__ import annotations

import logging
from typing import Protocol

from google.protobuf.message import DecodeError

from asm_proxy import authz
from asm_proxy.caller import Caller
from asm_proxy.health import CHECK_METHOD as HEALTH_CHECK
from asm_proxy.health import WATCH_METHOD as HEALTH_WATCH
from asm_proxy.health import Health
from asm_proxy.state import ServerState
from asm_proxy.stats import counters
from asm_proxy.status import OK, Code, Status
from asm_proxy.stream import ProtocolError, Stream
from asm_proxy.tls import proven_peer
from asm_proxy.wire import CHECK_METHOD, PROCESS_METHOD, CheckRequest, ProcessingRequest

log = logging.getLogger("asm_proxy.server")

#: gRPC method path -> how it is called ("stream": bidirectional, "unary", "server-stream").
METHODS = {
    PROCESS_METHOD: "stream",
    CHECK_METHOD: "unary",
    HEALTH_CHECK: "unary",
    HEALTH_WATCH: "server-stream",
}

INTERNAL_STREAM = Status(Code.INTERNAL, "asm-proxy internal error on this stream; see its log")
INTERNAL_CHECK = Status(Code.INTERNAL, "asm-proxy internal error during Check; see its log")


class Call(Protocol):
    def caller(self) -> Caller:
        """Who is calling, as the transport proved it (asked only when settings need it)."""
        ...


class MessageStream(Call, Protocol):
    async def read(self) -> bytes | None:
        """The next message, or None when the client has ended its side."""
        ...

    async def write(self, message: bytes) -> None:
        """Send one message (the transport frames it)."""
        ...


class Services:
    def __init__(self, state: ServerState, health: Health) -> None:
        self.state = state
        self.health = health

    async def process(self, call: MessageStream) -> Status:
        state = self.state
        chain = state.chain
        chain.acquire()
        counters.streams_started += 1
        try:
            settings = state.settings
            peer = proven_peer(call.caller(), settings) if settings.proves_peers else None
            stream = Stream(chain, settings, peer=peer)
            read, write, parse = call.read, call.write, ProcessingRequest.FromString
            while True:
                data = await read()
                if data is None:
                    return OK
                try:
                    msg = parse(data)
                except DecodeError as exc:
                    raise ProtocolError(
                        Code.INVALID_ARGUMENT, f"not a ProcessingRequest: {exc}"
                    ) from None
                reply = await stream.handle(msg)
                if reply is None:
                    continue
                if isinstance(reply, list):
                    for item in reply:
                        await write(item.SerializeToString())
                else:
                    await write(reply.SerializeToString())
                if stream.closing:
                    counters.streams_closed_early += 1
                    return OK  # nothing more is needed: end the stream
        except ProtocolError as exc:
            counters.streams_aborted += 1
            log.info("ext_proc stream ended: %s", exc.message)
            return Status(exc.code, exc.message)
        except Exception:
            counters.streams_aborted += 1
            log.exception("ext_proc stream failed inside asm-proxy")
            return INTERNAL_STREAM
        finally:
            counters.streams_finished += 1
            chain.release()

    async def check(self, request: bytes, call: Call) -> bytes | Status:
        try:
            parsed = CheckRequest.FromString(request)
        except DecodeError as exc:
            log.info("ext_authz Check refused: not a CheckRequest: %s", exc)
            return Status(Code.INVALID_ARGUMENT, f"not a CheckRequest: {exc}")
        caller = call.caller() if self.state.settings.proves_peers else Caller()
        try:
            answer = await authz.decide(self.state, parsed, caller)
        except Exception:
            log.exception("ext_authz Check failed inside asm-proxy")
            return INTERNAL_CHECK
        return answer.SerializeToString()
