"""ext_authz: Envoy's Authorization/Check answered by the AUTHN and AUTHZ plugins.

A Check carries the request headers (and, with `with_request_body`, the body). The plugins
of the AUTHN and AUTHZ phases run their request hooks on it, exactly as in the ext_proc
chain. No Respond: allowed, with their header changes and dynamic metadata. A Respond:
denied with its status, headers and body. A plugin error is handled by its fail strategy;
a denial is never a gRPC error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from asm_proxy import codec, observe
from asm_proxy.caller import Caller
from asm_proxy.chain import run_hooks
from asm_proxy.envoy_headers import decode_header_map, encode_value
from asm_proxy.events import REQUEST_BODY, REQUEST_HEADERS
from asm_proxy.exchange import Exchange
from asm_proxy.headers import (
    HeaderAction,
    HeaderOp,
    Headers,
    adopt,
    checked_pair,
    pending_names,
    take_ops,
)
from asm_proxy.identity import Workload
from asm_proxy.logs import bind_exchange
from asm_proxy.observe import EXT_AUTHZ, StreamEnd
from asm_proxy.plugin import Respond
from asm_proxy.state import ServerState
from asm_proxy.stats import counters
from asm_proxy.tls import proven_peer
from asm_proxy.wire import auth, core

log = logging.getLogger("asm_proxy.authz")

_OK = 0
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16

#: context_extensions keys (set in Envoy's config, never by a client) naming the workload.
WORKLOAD_KEYS = ("workload.namespace", "workload.name", "workload.serviceAccount")
LABEL_PREFIX = "workload.labels."


def _headers_of(http_request: auth.AttributeContext.HttpRequest) -> Headers:
    pairs: dict[str, list[str]]
    if http_request.header_map.headers:
        pairs = decode_header_map(http_request.header_map)
    else:
        pairs = {k.lower(): [v] for k, v in http_request.headers.items()}
    # Envoy puts pseudo-headers in the map; fill them from the fields if it did not.
    for key, value in (
        (":method", http_request.method),
        (":path", http_request.path),
        (":authority", http_request.host),
        (":scheme", http_request.scheme),
    ):
        if value and key not in pairs:
            pairs[key] = [value]
    return adopt(pairs, None)


def _address(peer: auth.AttributeContext.Peer) -> str | None:
    sock = peer.address.socket_address
    if not sock.address:
        return None
    host = f"[{sock.address}]" if ":" in sock.address else sock.address
    return f"{host}:{sock.port_value}"


def attributes_of_check(request: auth.CheckRequest) -> dict[str, Any]:
    """The CheckRequest as Envoy attribute names, like ext_proc's request_attributes."""
    ctx = request.attributes
    http_request = ctx.request.http
    attrs: dict[str, Any] = {
        "request.id": http_request.id,
        "request.protocol": http_request.protocol,
        "request.size": http_request.size,
    }
    for prefix, peer in (("source", ctx.source), ("destination", ctx.destination)):
        address = _address(peer)
        if address:
            attrs[prefix + ".address"] = address
        if peer.principal:
            attrs[prefix + ".principal"] = peer.principal
    if ctx.tls_session.sni:
        attrs["connection.requested_server_name"] = ctx.tls_session.sni
    if ctx.context_extensions:
        attrs["context_extensions"] = dict(ctx.context_extensions)
    return attrs


def workload_of_check(request: auth.CheckRequest) -> Workload | None:
    ext = request.attributes.context_extensions
    if not ext:
        return None
    labels = {k[len(LABEL_PREFIX) :]: v for k, v in ext.items() if k.startswith(LABEL_PREFIX)}
    namespace, name, service_account = (ext.get(k) or None for k in WORKLOAD_KEYS)
    if not (namespace or name or service_account or labels):
        return None
    return Workload(namespace=namespace, labels=labels, name=name, service_account=service_account)


def _with_proof(configured: Workload | None, proven: Workload) -> Workload:
    """The workload: namespace and service account as the certificate proves them, the rest
    (labels, name) from the context extensions of Envoy's config."""
    return Workload(
        namespace=proven.namespace,
        labels=configured.labels if configured else proven.labels,
        name=configured.name if configured else None,
        service_account=proven.service_account,
        principal=proven.principal,
    )


def identity_mismatch(configured: Workload | None, proven: Workload | None) -> str | None:
    """The context extensions name another namespace than the caller's certificate."""
    if proven is None or configured is None or configured.namespace is None:
        return None
    if configured.namespace != proven.namespace:
        return (
            f"context extensions say namespace {configured.namespace!r}, "
            f"the certificate ({proven.principal}) says {proven.namespace!r}"
        )
    return None


def exchange_of_check(
    request: auth.CheckRequest,
    proven: Workload | None = None,
    configured: Workload | None = None,
) -> Exchange:
    """The exchange a Check asks about; `proven`: the caller's identity from mTLS;
    `configured`: workload_of_check(request), if the caller has it already."""
    http_request = request.attributes.request.http
    headers = _headers_of(http_request)
    if configured is None:
        configured = workload_of_check(request)
    peer = configured if proven is None else _with_proof(configured, proven)
    x = Exchange(headers, peer=peer)
    attrs = attributes_of_check(request)
    x.add_attributes(lambda: attrs)
    if request.attributes.HasField("metadata_context"):
        metadata = request.attributes.metadata_context
        x.set_metadata_source(lambda: codec.metadata_of(metadata))
    body = x.request.buffer()
    if http_request.raw_body:
        body.add(http_request.raw_body)
    elif http_request.body:
        body.add(encode_value(http_request.body))
    # Envoy marks a body cut at max_request_bytes with this header.
    body.complete = headers.get("x-envoy-auth-partial-body") != "true"
    return x


def flat_metadata(x: Exchange, namespace: str) -> dict[str, Any] | None:
    """The plugins' dynamic metadata as Envoy files it for ext_authz: the server's own
    namespace at the top, any other namespace as a key."""
    out = x.take_metadata()
    if not out:
        return None
    flat: dict[str, Any] = {}
    for ns, values in out.items():
        if ns is None or ns == namespace:
            flat.update(values)
        else:
            flat.setdefault(ns, {}).update(values)
    return flat


@dataclass(slots=True)
class Decision:
    """What the AUTHN and AUTHZ plugins decided, before any wire format: `respond` None is
    allowed (with the header changes recorded on `exchange`), else denied with it."""

    respond: Respond | None
    exchange: Exchange | None
    metadata: dict[str, Any] | None


def denied_headers(respond: Respond) -> list[tuple[str, str]]:
    """A denial's headers, refused (ValueError) when a name or value could not be set
    through Headers: Envoy's ext_authz hands a CR or LF in them to the client as it is,
    so "a\r\nx-injected: 1" would add a header of its own (ext_proc drops such a header)."""
    return [checked_pair(key, value) for key, value in respond.header_pairs()]


def _joined_header_ops(respond: Respond) -> dict[str, list[HeaderOp]]:
    """Envoy's ext_authz keeps one value per name in a denied response, so repeated names
    travel as one comma-joined field (RFC 9110 5.3); set-cookie cannot be joined and keeps
    only its first value."""
    values: dict[str, list[str]] = {}
    for key, value in denied_headers(respond):
        values.setdefault(key, []).append(value)
    ops: dict[str, list[HeaderOp]] = {}
    for key, vals in values.items():
        if len(vals) > 1 and key == "set-cookie":
            log.warning("ext_authz denied response: only the first set-cookie is sent")
            vals = vals[:1]
        ops[key] = [(HeaderAction.SET, ", ".join(vals))]
    return ops


def denied(respond: Respond, metadata: Mapping[str, Any] | None) -> auth.CheckResponse:
    status_code = _UNAUTHENTICATED if respond.status == 401 else _PERMISSION_DENIED
    headers, _ = codec.header_value_options(_joined_header_ops(respond))
    reply = auth.CheckResponse(
        status=auth.Status(code=status_code, message=respond.details),
        denied_response=auth.DeniedHttpResponse(
            status=core.HttpStatus(code=respond.status),
            headers=headers,
            body=respond.body_bytes().decode("utf-8", "replace"),
        ),
    )
    if metadata:
        reply.dynamic_metadata.update(metadata)  # written in place, no Struct to copy
    if respond.details:
        reply.dynamic_metadata.update({"details": respond.details})
    return reply


def allowed(x: Exchange, metadata: Mapping[str, Any] | None) -> auth.CheckResponse:
    headers = x.request.headers
    ops = take_ops(headers) if headers is not None else {}
    options, removed = codec.header_value_options(ops)
    reply = auth.CheckResponse(
        status=auth.Status(code=_OK),
        ok_response=auth.OkHttpResponse(headers=options, headers_to_remove=removed),
    )
    if metadata:
        reply.dynamic_metadata.update(metadata)
    return reply


ExchangeFactory = Callable[[Workload | None], Exchange]
#: What a transport sends back for a decision (a CheckResponse, the bytes of an HTTP answer).
Answer = TypeVar("Answer")

_IDENTITY_MISMATCH = Respond(403, body="workload identity mismatch\n")


#: What a check gets when its plugins rewrite a pseudo-header (`:path`: an API key taken
#: out of the query) and the answer cannot carry it (ext_authz over HTTP).
CANNOT_REWRITE = Respond(
    403,
    body="forbidden: this check needs a path rewrite, which ext_authz over HTTP cannot make\n",
    details="asm_proxy_cannot_rewrite_over_http",
)


async def judge(
    state: ServerState,
    configured: Workload | None,
    exchange_for: ExchangeFactory,
    caller: Caller,
    answer: Callable[[Decision], Answer],
    *,
    pseudo_headers: bool = True,
) -> Answer:
    """Run the AUTHN and AUTHZ plugins on one check, whatever it came over, and return
    `answer(decision)`: `configured` is the workload Envoy's config names (context
    extensions; None over HTTP), `exchange_for(proven)` makes the exchange once the
    caller's proven identity is known. The answer is built here, so a decision that cannot
    be put on the wire (metadata no Struct or JSON holds, a header `denied_headers`
    refuses) is counted as asm-proxy's failure, not as allowed or denied.
    Without `pseudo_headers` (an answer that cannot rewrite them) a check its plugins
    allow but whose pseudo-headers they change is refused, and counted so: letting the
    request through unchanged would forward what a plugin meant to remove.
    A denial is a decision, not an error; raises only on asm-proxy's own failures."""
    chain = state.chain
    settings = state.settings
    chain.acquire()
    counters.authz_checks += 1
    # The stream seams (metrics, observers): told here, where every transport's check passes.
    meter = observe.stream_meter
    started = meter.started(EXT_AUTHZ) if meter is not None else 0.0
    watching = observe.stream_started(EXT_AUTHZ) if observe.stream_observers else None
    x: Exchange | None = None
    end = StreamEnd.CANCELLED  # unless it gets further
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.deadline
        proven = proven_peer(caller, settings) if settings.proves_peers else None
        conflict = identity_mismatch(configured, proven)
        if conflict is not None:
            log.warning("Check refused: %s", conflict)
            counters.identity_refusals += 1
            refusal = answer(Decision(_IDENTITY_MISMATCH, None, None))
            end = StreamEnd.DENIED
            return refusal
        x = exchange_for(proven)
        bind_exchange(x)
        if observe.tracer is not None:
            observe.trace(x, EXT_AUTHZ, None)
        plan = chain.select(x, authz_only=True)
        outcome: Respond | None = None
        hooks = plan.hooks[REQUEST_HEADERS]
        if hooks:
            outcome = await run_hooks(hooks, x, (), deadline)
        hooks = plan.hooks[REQUEST_BODY]
        if outcome is None and x.request.buffer().size and hooks:
            outcome = await run_hooks(hooks, x, (), deadline)
        if outcome is None and not pseudo_headers:
            outcome = _unanswerable(x)
        x.undo.commit()
        metadata = flat_metadata(x, settings.metadata_namespace)
        reply = answer(Decision(outcome, x, metadata))
        if outcome is not None:
            counters.authz_denied += 1
            x.immediate_status = outcome.status
            end = StreamEnd.DENIED
        else:
            end = StreamEnd.ALLOWED
        return reply
    except Exception:
        end = StreamEnd.INTERNAL_ERROR  # the caller logs it and ends the check
        raise
    finally:
        chain.release()
        if meter is not None:
            meter.ended(EXT_AUTHZ, x, end, started)
        if watching is not None:
            observe.stream_ended(watching, EXT_AUTHZ, x, end)
        if x is not None and x.trace is not None:
            observe.trace_ended(x, end)


def _unanswerable(x: Exchange) -> Respond | None:
    """CANNOT_REWRITE if the plugins changed a pseudo-header, else None."""
    headers = x.request.headers
    names = [n for n in pending_names(headers) if n.startswith(":")] if headers else []
    if not names:
        return None
    log.warning("ext_authz over HTTP cannot rewrite %s; refused (use gRPC)", ", ".join(names))
    return CANNOT_REWRITE


async def decide(
    state: ServerState, request: auth.CheckRequest, caller: Caller
) -> auth.CheckResponse:
    """A gRPC Check: the plugins' decision as the CheckResponse Envoy gets."""
    configured = workload_of_check(request)
    return await judge(
        state,
        configured,
        lambda proven: exchange_of_check(request, proven, configured),
        caller,
        check_response,
    )


def check_response(decision: Decision) -> auth.CheckResponse:
    """The CheckResponse Envoy gets for a decision."""
    if decision.respond is not None:
        return denied(decision.respond, decision.metadata)
    assert decision.exchange is not None
    return allowed(decision.exchange, decision.metadata)
