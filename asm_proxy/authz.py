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
from typing import Any

import grpc

from asm_proxy import codec, faults
from asm_proxy.chain import run_hooks
from asm_proxy.exchange import Http
from asm_proxy.headers import HeaderAction, HeaderOp, Headers
from asm_proxy.identity import Workload
from asm_proxy.plugin import Respond
from asm_proxy.protos import auth, auth_grpc, http_status, rpc_status
from asm_proxy.stats import counters

log = logging.getLogger("asm_proxy.authz")

_OK = 0
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16

#: context_extensions keys (set in Envoy's config, never by a client) naming the workload.
WORKLOAD_KEYS = ("workload.namespace", "workload.name", "workload.serviceAccount")
LABEL_PREFIX = "workload.labels."


def _headers_of(http_request: Any) -> Headers:
    pairs: dict[str, list[str]]
    if http_request.header_map.headers:
        pairs = codec.decode_header_map(http_request.header_map)
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
    return Headers._adopt(pairs, None)


def _address(peer: Any) -> str | None:
    sock = peer.address.socket_address
    if not sock.address:
        return None
    host = f"[{sock.address}]" if ":" in sock.address else sock.address
    return f"{host}:{sock.port_value}"


def attributes_of_check(request: Any) -> dict[str, Any]:
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


def workload_of_check(request: Any) -> Workload | None:
    ext = request.attributes.context_extensions
    if not ext:
        return None
    labels = {k[len(LABEL_PREFIX) :]: v for k, v in ext.items() if k.startswith(LABEL_PREFIX)}
    namespace, name, service_account = (ext.get(k) or None for k in WORKLOAD_KEYS)
    if not (namespace or name or service_account or labels):
        return None
    return Workload(namespace=namespace, labels=labels, name=name, service_account=service_account)


def http_of_check(request: Any) -> Http:
    http_request = request.attributes.request.http
    http = Http(_headers_of(http_request), peer=workload_of_check(request))
    attrs = attributes_of_check(request)
    http.add_attributes(lambda: attrs)
    if request.attributes.HasField("metadata_context"):
        metadata = request.attributes.metadata_context
        http.set_metadata_source(lambda: codec.metadata_of(metadata))
    body = http.request.body
    if http_request.raw_body:
        body.add_chunk(http_request.raw_body)
    elif http_request.body:
        body.add_chunk(codec.encode_value(http_request.body))
    # Envoy marks a body cut at max_request_bytes with this header.
    body.complete = http.request.headers.get("x-envoy-auth-partial-body") != "true"
    return http


def _metadata_struct(http: Http, namespace: str) -> Any | None:
    out = http.take_metadata()
    if not out:
        return None
    flat: dict[str, Any] = {}
    for ns, values in out.items():
        if ns is None or ns == namespace:
            flat.update(values)
        else:
            flat.setdefault(ns, {}).update(values)
    return codec.dict_to_struct(flat)


def _joined_header_ops(respond: Respond) -> dict[str, list[HeaderOp]]:
    """Envoy's ext_authz keeps one value per name in a denied response, so repeated names
    travel as one comma-joined field (RFC 9110 5.3); set-cookie cannot be joined and keeps
    only its first value."""
    values: dict[str, list[str]] = {}
    for key, value in respond.header_pairs():
        values.setdefault(key, []).append(value)
    ops: dict[str, list[HeaderOp]] = {}
    for key, vals in values.items():
        if len(vals) > 1 and key == "set-cookie":
            log.warning("ext_authz denied response: only the first set-cookie is sent")
            vals = vals[:1]
        ops[key] = [(HeaderAction.SET, ", ".join(vals))]
    return ops


def denied(respond: Respond, metadata: Any | None) -> Any:
    status_code = _UNAUTHENTICATED if respond.status == 401 else _PERMISSION_DENIED
    headers, _ = codec.header_value_options(_joined_header_ops(respond))
    reply = auth.CheckResponse(
        status=rpc_status.Status(code=status_code, message=respond.details),
        denied_response=auth.DeniedHttpResponse(
            status=http_status.HttpStatus(code=respond.status),
            headers=headers,
            body=respond.body_bytes().decode("utf-8", "replace"),
        ),
    )
    if metadata is not None:
        reply.dynamic_metadata.CopyFrom(metadata)
    if respond.details:
        reply.dynamic_metadata.update({"details": respond.details})
    return reply


def allowed(http: Http, metadata: Any | None) -> Any:
    options, removed = codec.header_value_options(http.request.headers.take_ops())
    reply = auth.CheckResponse(
        status=rpc_status.Status(code=_OK),
        ok_response=auth.OkHttpResponse(headers=options, headers_to_remove=removed),
    )
    if metadata is not None:
        reply.dynamic_metadata.CopyFrom(metadata)
    return reply


class AuthorizationServicer(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, state: Any) -> None:
        self._state = state

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        state = self._state
        chain = state.chain
        settings = state.settings
        chain.acquire()
        counters.authz_checks += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + settings.deadline
            http = http_of_check(request)
            plan = chain.select(http, authz_only=True)
            outcome: Respond | None = None
            if plan.hooks["request_headers"]:
                outcome = await run_hooks(plan.hooks["request_headers"], http, (), deadline)
            body = http.request.body
            if outcome is None and body.received_size and plan.hooks["request_body"]:
                outcome = await run_hooks(plan.hooks["request_body"], http, (), deadline)
            http.undo.commit()
            metadata = _metadata_struct(http, settings.metadata_namespace)
            if outcome is not None:
                counters.authz_denied += 1
                return denied(outcome, metadata)
            return allowed(http, metadata)
        except Exception as exc:
            faults.internal_fault("ext_authz Check", exc)
            await context.abort(
                grpc.StatusCode.INTERNAL, "asm-proxy internal error during Check; see its log"
            )
        finally:
            chain.release()
