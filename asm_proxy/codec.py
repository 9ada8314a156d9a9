"""Translation between Envoy's protobuf messages and the plain types plugins use.

The only module besides the servicers that builds or reads Envoy messages. Header values
are decoded with UTF-8 + surrogateescape, so any bytes survive the round trip unchanged
while ordinary text reads as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, wrappers_pb2

from asm_proxy.headers import HeaderAction, HeaderOp
from asm_proxy.plugin import Respond
from asm_proxy.wire import core, ext_proc

_TRUE = wrappers_pb2.BoolValue(value=True)


def _header_value(key: str, value: str, raw: bool) -> Any:
    if not raw:
        try:
            return core.HeaderValue(key=key, value=value.encode("utf-8").decode("utf-8"))
        except UnicodeEncodeError:
            pass  # bytes that are not UTF-8 can only travel as raw_value
    return core.HeaderValue(key=key, raw_value=encode_value(value))


def _option(key: str, action: HeaderAction, value: str, raw: bool = True) -> Any:
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


def decode_value(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_value(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def decode_header_map(header_map: Any) -> dict[str, list[str]]:
    """{lower-case name: [values]} from an envoy.config.core.v3.HeaderMap."""
    result: dict[str, list[str]] = {}
    for h in header_map.headers:
        raw = h.raw_value
        value = raw.decode("utf-8", "surrogateescape") if raw else h.value
        key = h.key
        values = result.get(key)
        if values is None:
            result[key] = [value]
        else:
            values.append(value)
    return result


def header_map_of(pairs: Iterable[tuple[str, str]]) -> Any:
    """An envoy.config.core.v3.HeaderMap with raw_value set (for tests and clients)."""
    return core.HeaderMap(
        headers=[core.HeaderValue(key=k, raw_value=encode_value(v)) for k, v in pairs]
    )


#: HeaderMutations already built, by the operations they carry: most plugins set the same
#: headers to the same values on every request. Callers copy them into their reply.
_MUTATIONS: dict[tuple[tuple[str, tuple[HeaderOp, ...]], ...], Any] = {}
_MUTATIONS_MAX = 1024


def header_mutation(ops: Mapping[str, list[HeaderOp]]) -> Any:
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


def _build_header_mutation(ops: Mapping[str, list[HeaderOp]]) -> Any:
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


def header_value_options(ops: Mapping[str, list[HeaderOp]]) -> tuple[list[Any], list[str]]:
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


def struct_to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message)
    return result


def dict_to_struct(values: Mapping[str, Any]) -> Any:
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out


def attributes_of(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten ProcessingRequest.attributes ({filter name: Struct}) to {attribute: value}."""
    flat: dict[str, Any] = {}
    for value in attributes.values():
        flat.update(struct_to_dict(value))
    return flat


def metadata_of(metadata: Any) -> dict[str, Any]:
    """{namespace: {...}} from an envoy.config.core.v3.Metadata (untyped namespaces)."""
    return {ns: struct_to_dict(value) for ns, value in metadata.filter_metadata.items()}


def dynamic_metadata(out: Mapping[str | None, Mapping[str, Any]], default_namespace: str) -> Any:
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


def immediate_response(respond: Respond) -> Any:
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
