"""Translation between Envoy's protobuf messages and the plain types plugins use.

With `replies` (ext_proc answers) and `authz` (Check), the only code that builds or reads
Envoy messages. Header maps are decoded by `envoy_headers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, wrappers_pb2

from asm_proxy.envoy_headers import encode_value
from asm_proxy.headers import HeaderAction, HeaderOp
from asm_proxy.plugin import Respond
from asm_proxy.wire import core, ext_proc

_TRUE = wrappers_pb2.BoolValue(value=True)


def _header_value(key: str, value: str, raw: bool) -> core.HeaderValue:
    if not raw:
        try:
            return core.HeaderValue(key=key, value=value.encode("utf-8").decode("utf-8"))
        except UnicodeEncodeError:
            pass  # bytes that are not UTF-8 can only travel as raw_value
    return core.HeaderValue(key=key, raw_value=encode_value(value))


def _option(key: str, action: HeaderAction, value: str, raw: bool = True) -> core.HeaderValueOption:
    """One HeaderValueOption. Appending uses the `append` flag: Envoy's ext_proc reads
    append_action only when it is not 0, and 0 *is* APPEND_IF_EXISTS_OR_ADD, so an
    append_action of APPEND_IF_EXISTS_OR_ADD alone would overwrite."""
    header = _header_value(key, value, raw)
    if action is HeaderAction.APPEND:
        return core.HeaderValueOption(header=header, append=_TRUE)
    if action is HeaderAction.ADD_IF_ABSENT:
        return core.HeaderValueOption(
            header=header, append_action=core.HeaderValueOption.ADD_IF_ABSENT
        )
    return core.HeaderValueOption(
        header=header, append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )


def header_map_of(pairs: Iterable[tuple[str, str]]) -> core.HeaderMap:
    """An envoy.config.core.v3.HeaderMap with raw_value set (for tests and clients)."""
    return core.HeaderMap(
        headers=[core.HeaderValue(key=k, raw_value=encode_value(v)) for k, v in pairs]
    )


#: HeaderMutations already built, by the operations they carry: most plugins set the same
#: headers to the same values on every request. Callers copy them into their reply.
_MUTATIONS: dict[tuple[tuple[str, tuple[HeaderOp, ...]], ...], ext_proc.HeaderMutation] = {}
_MUTATIONS_MAX = 1024


def header_mutation(ops: Mapping[str, list[HeaderOp]]) -> ext_proc.HeaderMutation:
    """The smallest HeaderMutation with the effect of the recorded operations (shared:
    copy it, do not change it)."""
    key = tuple([(name, tuple(name_ops)) for name, name_ops in ops.items()])
    mutation = _MUTATIONS.get(key)
    if mutation is None:
        mutation = _build_header_mutation(ops)
        if len(_MUTATIONS) >= _MUTATIONS_MAX:
            _MUTATIONS.clear()
        _MUTATIONS[key] = mutation
    return mutation


def _build_header_mutation(ops: Mapping[str, list[HeaderOp]]) -> ext_proc.HeaderMutation:
    mutation = ext_proc.HeaderMutation()
    set_headers = mutation.set_headers
    remove = mutation.remove_headers
    for key, key_ops in ops.items():
        for action, value in key_ops:
            if action is HeaderAction.REMOVE:
                remove.append(key)
            else:
                set_headers.append(_option(key, action, value))
    return mutation


def header_value_options(
    ops: Mapping[str, list[HeaderOp]],
) -> tuple[list[core.HeaderValueOption], list[str]]:
    """(HeaderValueOptions, names to remove) for ext_authz, which reads `value`, not
    `raw_value`."""
    options = []
    removed = []
    for key, key_ops in ops.items():
        for action, value in key_ops:
            if action is HeaderAction.REMOVE:
                removed.append(key)
            else:
                options.append(_option(key, action, value, raw=False))
    return options, removed


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message)
    return result


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out


def attributes_of(attributes: Mapping[str, struct_pb2.Struct]) -> dict[str, Any]:
    """Flatten ProcessingRequest.attributes ({filter name: Struct}) to {attribute: value}."""
    flat: dict[str, Any] = {}
    for value in attributes.values():
        flat.update(struct_to_dict(value))
    return flat


def metadata_of(metadata: core.Metadata) -> dict[str, Any]:
    """{namespace: {...}} from an envoy.config.core.v3.Metadata (untyped namespaces)."""
    return {ns: struct_to_dict(value) for ns, value in metadata.filter_metadata.items()}


def dynamic_metadata(
    out: Mapping[str | None, Mapping[str, Any]], default_namespace: str
) -> struct_pb2.Struct:
    """The Struct {namespace: {key: value}} Envoy files under each namespace."""
    merged: dict[str, dict[str, Any]] = {}
    for namespace, values in out.items():
        merged.setdefault(namespace or default_namespace, {}).update(values)
    return dict_to_struct(merged)


def respond_header_ops(respond: Respond) -> dict[str, list[HeaderOp]]:
    """A Respond's headers as operations: the first value of a name replaces Envoy's
    default (content-type: text/plain ...), later values of the same name are appended."""
    ops: dict[str, list[HeaderOp]] = {}
    for key, value in respond.header_pairs():
        action = HeaderAction.APPEND if key in ops else HeaderAction.SET
        ops.setdefault(key, []).append((action, value))
    return ops


def immediate_response(respond: Respond) -> ext_proc.ImmediateResponse:
    reply = ext_proc.ImmediateResponse(
        status=core.HttpStatus(code=respond.status),
        body=respond.body_bytes(),
        details=respond.details,
    )
    ops = respond_header_ops(respond)
    if ops:
        reply.headers.CopyFrom(header_mutation(ops))
    if respond.grpc_status is not None:
        reply.grpc_status.status = respond.grpc_status
    return reply
