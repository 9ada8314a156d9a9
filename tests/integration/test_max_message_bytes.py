"""`maxMessageBytes` through the real Envoy: the largest gRPC message asm-proxy takes (a
BUFFERED body travels in one, docs/PLUGINS.md). A larger one ends that exchange's stream
with RESOURCE_EXHAUSTED and a message naming the limit, and the request goes on as the
filter's `failure_mode_allow` says: answered 500 (false, the default), or passed upstream
unprocessed (true). A message under the limit is processed as usual.

Envoy's message_timeout is 2 s here, not the 0.2 s render derives: the grpcio transport's
refusal comes from grpc core, which sends it 0.1-0.9 s after the message (measured; the
nghttp2 transport's, asm-proxy's own, within a few ms), so at 0.2 s Envoy often gives up
first and counts a message timeout instead of the status under test."""

from __future__ import annotations

import re

import pytest

from asm_proxy.envoy_bootstrap import ExtProc
from asm_proxy.upstream import _pattern
from tests.integration.conftest import StackFactory

LIMIT = 65536
CONFIG = f"""
maxMessageBytes: {LIMIT}
plugins:
  - {{name: upper, type: 'tests.support.plugins:UpperBody', config: {{response: false}}}}
"""
SMALL = _pattern(LIMIT // 2)
LARGE = _pattern(2 * LIMIT)  # its request_body message is a little larger still
#: Envoy's details for a stream asm-proxy ended with gRPC status 8 (RESOURCE_EXHAUSTED),
#: carrying asm-proxy's message (each transport words it its own way; both name the limit).
REFUSED = re.compile(rf"ext_proc_error_gRPC_error_8\{{.*larger.*{LIMIT}")


@pytest.mark.parametrize("failure_mode_allow", [False, True], ids=["fail-closed", "fail-open"])
def test_a_message_over_the_limit_is_refused(stack: StackFactory, failure_mode_allow: bool) -> None:
    s = stack(
        CONFIG,
        ext_proc=ExtProc(
            request_body_mode="BUFFERED",
            failure_mode_allow=failure_mode_allow,
            message_timeout="2s",
        ),
    )
    small = s.post("/", content=SMALL)
    assert small.status_code == 200
    assert s.seen("a").body == SMALL.upper()  # under the limit: the plugin had it
    before = len(s.upstreams["a"].requests)
    large = s.post("/", content=LARGE)
    _, refused = s.log_entries(2)
    stats = s.envoy.ext_proc_stats()
    assert (stats["streams_failed"], stats["message_timeouts"]) == (1, 0), stats
    if failure_mode_allow:
        assert large.status_code == 200
        assert s.seen("a").body == LARGE  # passed on as it came
        assert stats["failure_mode_allowed"] == 1, stats
    else:
        assert large.status_code == 500
        assert REFUSED.match(refused["details"]), refused
        assert len(s.upstreams["a"].requests) == before  # never reached the upstream
