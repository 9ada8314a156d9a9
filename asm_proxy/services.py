"""What every transport serves, in bytes and statuses: the seam between them and asm-proxy.

A transport moves serialized messages and reports how calls end; it knows nothing of
plugins, chains or Envoy's messages. `Services` holds the rest:

- `process(call)`: one ext_proc stream. Messages are read and answered one by one through
  the ext_proc state machine (`stream.Stream`) until Envoy ends the stream or nothing more
  is needed; the returned `Status` is how the transport must end it (OK, the client's fault
  with its reason, or INTERNAL). A client's fault is a throttled WARNING without a
  traceback, asm-proxy's own a throttled ERROR with one (`faults.py`), on every transport.
- `check(request, call)`: one ext_authz Check: the serialized CheckResponse, or the status
  to end the call with.
- `health`: grpc.health.v1 (`health.Health`).

Observability lives on this side of the seam, so every transport reports alike: `process`
tells the stream metrics and observers (asm_proxy.observe) when an ext_proc stream starts
and how it ended (`StreamEnd`), its exchange is offered to the tracer (stream.py), and
`authz.judge` does both for each check, over gRPC or HTTP/1.1; the exchange is bound to
the serving task for the logs' request and trace ids (`logs.bind_exchange`, in stream.py
and `authz.judge`). A transport only has to run each call in its own task and say how the
client ended it (`read`: None, or `StreamReset`).
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import DecodeError

from asm_proxy import authz, faults, observe
from asm_proxy.caller import NOBODY, Caller
from asm_proxy.health import Health
from asm_proxy.observe import CANCELLED, COMPLETE, EXT_PROC, StreamEnd
from asm_proxy.state import ServerState
from asm_proxy.stats import counters
from asm_proxy.status import OK, Code, Status
from asm_proxy.stream import ProtocolError, Stream
from asm_proxy.tls import proven_peer
from asm_proxy.wire import CheckRequest, ProcessingRequest

EXT_PROC_REQUEST = "envoy.service.ext_proc.v3.ProcessingRequest"
CHECK_REQUEST = "envoy.service.auth.v3.CheckRequest"

INTERNAL_STREAM = Status(Code.INTERNAL, "asm-proxy internal error on this stream; see its log")
INTERNAL_CHECK = Status(Code.INTERNAL, "asm-proxy internal error during Check; see its log")
#: What `process` returns for a stream the client reset (nothing reaches the client).
RESET = Status(Code.CANCELLED, "the client reset the stream")


class StreamReset(Exception):
    """Raised by `MessageStream.read` or `write` when the client reset the stream while a
    message was being answered (its answer cannot reach the client). A reset while
    waiting for the next message reads as the end of the stream instead: nothing was left
    unanswered (Envoy resets a stream it needs no more rather than closing it)."""


def not_a(message: str, exc: DecodeError) -> str:
    """The client's fault in Envoy's names (protobuf's text names asm-proxy's own copy of
    the message type, which a client has never heard of)."""
    reason = str(exc).rpartition("': ")[2] or "undecodable"
    return f"not an {message}: {reason}"


def client_fault(where: str, status: Status, peer: str) -> Status:
    """A call refused for the client's fault: counted, a throttled WARNING; `status` back."""
    counters.client_faults += 1
    faults.client_fault(where, status.message, peer)
    return status


class Call(Protocol):
    def caller(self) -> Caller:
        """Who is calling, as the transport proved it (asked only when settings need it)."""
        ...

    def peer(self) -> str:
        """The client's address for the log, as grpc writes it (`ipv4:HOST:PORT`,
        `unix:PATH`)."""
        ...


class MessageStream(Call, Protocol):
    async def read(self) -> bytes | None:
        """The next message, or None when the client has ended its side (or reset the
        stream while this was waiting); StreamReset if the client reset it meanwhile."""
        ...

    async def write(self, message: bytes) -> None:
        """Send one message (the transport frames it); StreamReset if the client has reset
        the stream."""
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
        meter = observe.stream_meter
        started = meter.started(EXT_PROC) if meter is not None else 0.0
        watching = observe.stream_started(EXT_PROC) if observe.stream_observers else None
        stream: Stream | None = None
        end = CANCELLED
        try:
            settings = state.settings
            peer = proven_peer(call.caller(), settings) if settings.proves_peers else None
            stream = Stream(chain, settings, peer=peer)
            read, write, parse = call.read, call.write, ProcessingRequest.FromString
            while True:
                # Envoy resets a stream it needs no more instead of closing it: reset while
                # waiting here, the exchange is complete (nothing was left unanswered).
                end = COMPLETE
                data = await read()
                if data is None:
                    return OK
                end = CANCELLED
                try:
                    msg = parse(data)
                except DecodeError as exc:
                    raise ProtocolError(
                        Code.INVALID_ARGUMENT, not_a(EXT_PROC_REQUEST, exc)
                    ) from None
                reply = await stream.handle(msg, data)
                if reply is None:
                    continue
                if isinstance(reply, list):
                    for item in reply:
                        await write(item.SerializeToString())
                else:
                    await write(reply.SerializeToString())
                if stream.closing:
                    counters.streams_closed_early += 1
                    end = StreamEnd.CLOSED_EARLY
                    return OK  # nothing more is needed: end the stream
        except StreamReset:
            # The client reset the stream while a message was being answered (a transport
            # that does not cancel the task; grpc.aio cancels it: CancelledError).
            counters.streams_cancelled += 1
            end = CANCELLED
            return RESET
        except ProtocolError as exc:
            counters.streams_aborted += 1
            end = StreamEnd.PROTOCOL_ERROR
            return client_fault("ext_proc stream", Status(exc.code, exc.message), call.peer())
        except Exception as exc:
            counters.streams_aborted += 1
            end = StreamEnd.INTERNAL_ERROR
            faults.internal_fault("ext_proc stream", exc)
            return INTERNAL_STREAM
        finally:
            counters.streams_finished += 1
            chain.release()
            exchange = stream.exchange if stream is not None else None
            if meter is not None:
                meter.ended(EXT_PROC, exchange, end, started)
            if watching is not None:
                observe.stream_ended(watching, EXT_PROC, exchange, end)
            if exchange is not None and exchange.trace is not None:
                observe.trace_ended(exchange, end)

    async def check(self, request: bytes, call: Call) -> bytes | Status:
        try:
            parsed = CheckRequest.FromString(request)
        except DecodeError as exc:
            refusal = Status(Code.INVALID_ARGUMENT, not_a(CHECK_REQUEST, exc))
            return client_fault("ext_authz Check", refusal, call.peer())
        caller = call.caller() if self.state.settings.proves_peers else NOBODY
        try:
            answer = await authz.decide(self.state, parsed, caller)
        except Exception as exc:
            faults.internal_fault("ext_authz Check", exc)
            return INTERNAL_CHECK
        return answer.SerializeToString()
