"""gRPC status codes and the status a call ends with, without a gRPC library.

The ext_proc state machine and the ext_authz decision say how a call ends in these terms;
each transport turns them into its own (`grpc.StatusCode` for grpc.aio, the
`grpc-status`/`grpc-message` trailers for the native one). The numbers are gRPC's
(`grpc/status.h`), fixed by the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import quote


class Code(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class Status:
    """How a call ended: a code and, unless OK, a message for the caller's log."""

    code: Code
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


OK = Status(Code.OK)


#: Printable ASCII but '%' stays as it is in `grpc-message` (letters and digits always do).
_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def encode_message(message: str) -> bytes:
    """`grpc-message` as the gRPC spec wants it on the wire: UTF-8, percent-encoded outside
    printable ASCII (and '%' itself)."""
    return quote(message, safe=_SAFE).encode("ascii")
