"""Bodies through a real Envoy cost at most one join and are never sent back unchanged:
proved with the server's copy counters, and by the bytes the upstream receives."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from asm_proxy.api import Http, Plugin
from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.stats import counters
from tests.integration.conftest import StackFactory

BODY = bytes(range(256)) * 4096  # 1 MiB, every byte value


class ReadTwice(Plugin):
    """Reads the whole request body twice (a validator, then a logger, say); changes nothing."""

    digests: list[str] = []
    chunks: list[int] = []

    def on_request_body(self, http: Http) -> None:
        body = http.request.body
        ReadTwice.chunks.append(len(body.chunks))
        first = body.data
        second = body.data
        assert first is second
        ReadTwice.digests.append(hashlib.sha256(first).hexdigest())


CONFIG = "plugins: [{name: read, type: 'tests.integration.test_zero_copy:ReadTwice'}]\n"


def in_pieces() -> Iterator[bytes]:
    """The body in four pieces with pauses, so Envoy forwards it in several chunks."""
    quarter = len(BODY) // 4
    for i in range(4):
        yield BODY[i * quarter : (i + 1) * quarter]
        time.sleep(0.05)


@pytest.mark.parametrize(
    "ext_proc",
    [
        # asm-proxy asks for the body BUFFERED: one message, one chunk, nothing to join.
        ExtProc(),
        # Envoy insists on STREAMED: the chunks are kept as they come and joined once.
        ExtProc(request_body_mode="STREAMED", allow_mode_override=False),
    ],
    ids=["buffered", "streamed"],
)
def test_unchanged_body_is_joined_at_most_once_and_never_sent_back(
    stack: StackFactory, ext_proc: ExtProc
) -> None:
    # Without allow_mode_override Envoy streams: asm-proxy is told (modeOverride: false).
    override = "true" if ext_proc.allow_mode_override else "false"
    s = stack(f"modeOverride: {override}\n" + CONFIG, ext_proc=ext_proc)
    ReadTwice.digests.clear()
    ReadTwice.chunks.clear()
    joined, sent = counters.body_bytes_joined, counters.body_bytes_sent
    resp = s.post("/", content=in_pieces(), headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200
    assert ReadTwice.digests == [hashlib.sha256(BODY).hexdigest()]
    assert s.seen("a").body == BODY
    (chunks,) = ReadTwice.chunks
    if ext_proc.request_body_mode == "STREAMED":
        assert chunks > 1
        assert counters.body_bytes_joined - joined == len(BODY)  # once, though read twice
    else:
        assert chunks == 1
        assert counters.body_bytes_joined == joined
    assert counters.body_bytes_sent == sent  # "continue": the body was not re-sent


def test_replaced_body_is_sent_once(stack: StackFactory) -> None:
    """A replacement is the only body that travels back, once."""
    s = stack(
        "plugins: [{name: up, type: 'tests.support.plugins:UpperBody', config: {response: false}}]"
    )
    sent = counters.body_bytes_sent
    resp = s.post("/", content=b"hello")
    assert resp.status_code == 200
    assert s.seen("a").body == b"HELLO"
    assert counters.body_bytes_sent - sent == len(b"HELLO")
