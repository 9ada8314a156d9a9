"""What `render` tells Envoy is derived from the chain: each rule, and that it can change."""

from __future__ import annotations

import pytest

from asm_proxy.loader import load_text
from asm_proxy.plugin import BodyAccess
from asm_proxy.render.needs import IDENTITY_ATTRIBUTES, derive

HEADERS_ONLY = "plugins:\n  - {name: tag, type: headers, config: {request: {set: {x-a: '1'}}}}\n"


def needs_of(text: str, *, shared: bool = False):  # type: ignore[no-untyped-def]
    return derive(load_text("render.yaml", text), shared=shared)


def test_a_request_headers_chain_needs_nothing_else() -> None:
    needs = needs_of(HEADERS_ONLY)
    assert not needs.response_headers and not needs.request_trailers
    assert (needs.request_body, needs.response_body) == (BodyAccess.NONE, BodyAccess.NONE)
    assert needs.ext_proc and not needs.ext_authz
    assert not needs.allow_all_routing
    assert needs.request_attributes == ()
    assert needs.metadata_namespaces == ("asm-proxy",)


def test_response_hooks_and_bodies_come_from_the_plugins() -> None:
    needs = needs_of(
        "plugins:\n"
        "  - {name: tag, type: headers, config: {response: {set: {x-b: '1'}}}}\n"
        "  - {name: log, type: body_log, config: {request: false, response: true}}\n"
        "  - {name: up, type: 'tests.support.plugins:UpperBody', config: {response: false}}\n"
    )
    assert needs.response_headers
    assert needs.response_body is BodyAccess.CHUNKS  # body_log works chunk by chunk
    assert needs.request_body is BodyAccess.WHOLE  # UpperBody wants the whole request body
    assert needs.response_trailers and not needs.request_trailers


def test_message_timeout_follows_the_deadline_and_the_longest_timeout() -> None:
    assert needs_of(HEADERS_ONLY).message_timeout == 0.2  # 180 ms deadline + 20 ms
    slow = HEADERS_ONLY.replace("{name: tag,", "{name: tag, timeout: 500ms,")
    assert needs_of(slow).message_timeout == 0.55  # the longest timeout + 10 %
    assert needs_of("deadline: 1s\n" + HEADERS_ONLY).message_timeout == 1.1


@pytest.mark.parametrize(
    ("strategies", "allowed"),
    [(["FAIL_OPEN", "FAIL_OPEN"], True), (["FAIL_OPEN", "FAIL_CLOSE"], False)],
)
def test_failure_mode_allow_only_when_every_plugin_is_fail_open(
    strategies: list[str], allowed: bool
) -> None:
    text = "plugins:\n" + "".join(
        f"  - {{name: p{i}, type: headers, failStrategy: {s}, config: {{}}}}\n"
        for i, s in enumerate(strategies)
    )
    assert needs_of(text).failure_mode_allow is allowed


def test_identity_attributes_when_shared_or_selected() -> None:
    assert needs_of(HEADERS_ONLY, shared=True).request_attributes == IDENTITY_ATTRIBUTES
    selected = HEADERS_ONLY.replace(
        "{name: tag,", "{name: tag, selector: {namespace: shop, matchLabels: {app: a, v: '1'}},"
    )
    assert needs_of(selected).request_attributes == (
        *IDENTITY_ATTRIBUTES,
        "xds.node.metadata.LABELS['app']",
        "xds.node.metadata.LABELS['v']",
    )


def test_routing_rewrites_need_allow_all_routing() -> None:
    rewrite = (
        "plugins:\n  - {name: h, type: headers, config: {request: {set: {':authority': b}}}}\n"
    )
    assert needs_of(rewrite).allow_all_routing
    dns = (
        "plugins:\n  - {name: r, type: reverse_dns,"
        " config: {podCIDRs: [10.0.0.0/8], static: {10.0.0.1: a.b.svc.cluster.local}}}\n"
    )
    assert needs_of(dns).allow_all_routing


def test_authz_via_ext_authz_takes_the_access_plugins_out_of_the_stream() -> None:
    text = (
        "authzVia: ext_authz\n"
        "plugins:\n"
        "  - {name: gate, type: direct_response, phase: AUTHZ, failStrategy: FAIL_OPEN,"
        " config: {status: 403}}\n"
        "  - {name: tag, type: headers, config: {response: {set: {x-b: '1'}}}}\n"
    )
    needs = needs_of(text)
    assert needs.ext_authz and needs.ext_proc
    assert needs.authz_failure_mode_allow and not needs.failure_mode_allow
    only_authz = needs_of(text.split("  - {name: tag")[0])
    assert only_authz.ext_authz and not only_authz.ext_proc
