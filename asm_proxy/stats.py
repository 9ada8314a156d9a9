"""Process-wide counters of what the server did, cheap enough for the per-request path.

Plain integer attributes, bumped inline; a worker's metrics snapshot exports them
(asm_proxy.metrics.serving). Tests read them to prove things Envoy cannot show (how many
bytes were copied joining bodies, which phases the chain skipped). Each process has its own:
a worker counts its streams, the supervisor its reloads, restarts and recycles
(`Supervisor.own_stats()`). Most are counters; the few gauges (a current state, not a
count) say so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    streams_started: int = 0
    streams_finished: int = 0
    streams_aborted: int = 0  # ended with an error status (any cause)
    client_faults: int = 0  # streams and Checks refused: undecodable, or protocol misuse
    streams_closed_early: int = 0  # ended by asm-proxy once the chain needed nothing more
    streams_reset_before_status: int = 0  # Envoy reset one before its final status went out
    streams_cancelled: int = 0  # Envoy reset one while asm-proxy waited for its next message
    messages: int = 0
    responses: int = 0
    mode_overrides: int = 0
    immediate_responses: int = 0
    hook_calls: int = 0
    hook_errors: int = 0
    hook_timeouts: int = 0
    fail_open: int = 0
    fail_close: int = 0
    body_bytes_joined: int = 0  # bytes copied to join chunks into one body
    bodies_replaced: int = 0
    body_bytes_sent: int = 0  # body bytes sent back to Envoy (replacements, held chunks)
    offloaded_calls: int = 0
    offload_bytes_in: int = 0  # copied into shared memory for the offload pool
    offload_bytes_out: int = 0  # copied out of shared memory from the offload pool
    authz_checks: int = 0
    authz_denied: int = 0
    config_reloads: int = 0
    config_reload_failures: int = 0
    identity_refusals: int = 0  # a proven peer contradicted by Envoy's node metadata
    config_file_unusable: int = 0  # gauge: 1 while the file is missing/not a file/unreadable
    config_file_unusable_events: int = 0  # times it became unusable (or the reason changed)
    config_file_unsettled: int = 0  # changes still being written after the settle checks
    worker_restarts: int = 0  # workers started again after they died
    worker_recycles: int = 0  # workers replaced on a stream count or RSS limit

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


counters = Counters()

#: ProcessingRequests received, by their `request` field (request_headers, ...).
message_kinds: Counter[str] = Counter()
