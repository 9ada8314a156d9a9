"""What Envoy's filters must be told, derived from the configured chain, never hand-tuned.

The phases are the union of what the plugins' hooks need (no response phase when no plugin
has a response hook, a body mode only where a plugin reads bodies), the message timeout
comes from the server's deadline and the largest plugin timeout, `failure_mode_allow` only
when every plugin is FAIL_OPEN, and the attributes, metadata namespaces and routing
permissions are what the plugins declare they use.
"""

from __future__ import annotations

from dataclasses import dataclass

from asm_proxy.config import ServerSettings
from asm_proxy.events import Event
from asm_proxy.loader import Loaded
from asm_proxy.plugin import BodyAccess, Phase

#: The node metadata Istio puts on every sidecar, which identity reads (asm_proxy.identity):
#: asked for when plugins select workloads, and always where one asm-proxy serves many.
#: Labels are asked for one by one (`LABELS['app']`): Envoy 1.40 sends a whole map
#: attribute as the string "CelMap value", not as a map.
IDENTITY_ATTRIBUTES = (
    "xds.node.metadata.NAMESPACE",
    "xds.node.metadata.WORKLOAD_NAME",
    "xds.node.metadata.SERVICE_ACCOUNT",
)


def label_attribute(key: str) -> str:
    return f"xds.node.metadata.LABELS['{key}']"


#: Time Envoy waits beyond asm-proxy's own answer deadline: the network and gRPC framing.
MESSAGE_TIMEOUT_MARGIN = 0.02


@dataclass(frozen=True)
class EnvoyNeeds:
    """Everything about the filter config that depends on the configured chain."""

    response_headers: bool
    request_body: BodyAccess
    response_body: BodyAccess
    request_trailers: bool
    response_trailers: bool
    message_timeout: float
    failure_mode_allow: bool
    allow_mode_override: bool
    request_attributes: tuple[str, ...]
    metadata_namespaces: tuple[str, ...]
    allow_all_routing: bool
    #: Some plugin runs in the ext_proc stream (else only ext_authz is needed).
    ext_proc: bool
    #: AUTHN/AUTHZ plugins run in Envoy's ext_authz filter (`authzVia: ext_authz`).
    ext_authz: bool
    authz_failure_mode_allow: bool
    #: The ext_authz check's timeout and whether it sends the request body.
    authz_timeout: float
    authz_body: bool
    settings: ServerSettings


def _widest(accesses: list[BodyAccess]) -> BodyAccess:
    return max(accesses, key=lambda a: a.value, default=BodyAccess.NONE)


def derive(loaded: Loaded, *, shared: bool) -> EnvoyNeeds:
    """`shared`: one asm-proxy serves many workloads (node, central), so every stream must
    carry the workload's identity."""
    settings = loaded.settings
    entries = loaded.chain.entries
    authz_phases = (Phase.AUTHN, Phase.AUTHZ)
    via_authz = settings.authz_via == "ext_authz"
    authz_entries = [e for e in entries if e.phase in authz_phases] if via_authz else []
    streamed = [e for e in entries if e not in authz_entries]
    plugins = [e.plugin for e in streamed]
    hooks = {event for p in plugins for event in p.hooks}
    attributes: list[str] = []
    if shared or any(e.selects is not None for e in entries):
        attributes += IDENTITY_ATTRIBUTES
        keys = {k for e in entries if e.selector for k in e.selector.match_labels}
        attributes += [label_attribute(k) for k in sorted(keys)]
    for entry in entries:
        attributes += sorted(entry.plugin.request_attributes)
    namespaces = [settings.metadata_namespace]
    for entry in entries:
        namespaces += sorted(entry.plugin.metadata_namespaces)
    timeouts = [e.timeout for e in entries if e.timeout is not None]
    longest = max([settings.deadline, *timeouts])
    margin = max(MESSAGE_TIMEOUT_MARGIN, longest * 0.1)
    return EnvoyNeeds(
        response_headers=any(not event.is_request for event in hooks),
        request_body=_widest([p.body_access("request") for p in plugins]),
        response_body=_widest([p.body_access("response") for p in plugins]),
        request_trailers=Event.REQUEST_TRAILERS in hooks,
        response_trailers=Event.RESPONSE_TRAILERS in hooks,
        message_timeout=round(longest + margin, 3),
        failure_mode_allow=bool(streamed) and all(e.fail_open for e in streamed),
        allow_mode_override=settings.mode_override,
        request_attributes=tuple(dict.fromkeys(attributes)),
        metadata_namespaces=tuple(dict.fromkeys(namespaces)),
        allow_all_routing=any(e.plugin.changes_routing for e in entries),
        ext_proc=bool(streamed),
        ext_authz=bool(authz_entries),
        authz_failure_mode_allow=bool(authz_entries) and all(e.fail_open for e in authz_entries),
        authz_timeout=round(settings.deadline + MESSAGE_TIMEOUT_MARGIN, 3),
        authz_body=any(Event.REQUEST_BODY in e.plugin.hooks for e in authz_entries),
        settings=settings,
    )
