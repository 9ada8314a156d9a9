"""match and selector: compiled once, cheap per request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asm_proxy.api import split_host_port
from asm_proxy.config import MatchRule, Selector
from asm_proxy.exchange import Exchange
from asm_proxy.headers import Headers
from asm_proxy.identity import UNKNOWN, Workload
from asm_proxy.matching import compile_host, compile_match, compile_selector


def request(path: str = "/", method: str = "GET", authority: str = "example.com", **headers: str):
    pairs = [(":path", path), (":method", method), (":authority", authority)]
    pairs += [(k.replace("_", "-"), v) for k, v in headers.items()]
    return Exchange(Headers(pairs)).http.request


def matches(rules: list[dict], req) -> bool:
    predicate = compile_match([MatchRule.model_validate(r) for r in rules])
    return True if predicate is None else predicate(req)


class TestHosts:
    @pytest.mark.parametrize(
        ("pattern", "authority", "expected"),
        [
            ("*", "anything:8080", True),
            ("example.com", "example.com", True),
            ("example.com", "EXAMPLE.com:8080", True),
            ("example.com", "api.example.com", False),
            ("*.example.com", "api.example.com", True),
            ("*.example.com", "example.com", False),
            ("*.example.com", "a.b.example.com:443", True),
            ("api.*", "api.internal", True),
            ("api.*", "api", False),
            ("example.com:8080", "example.com:8080", True),
            ("example.com:8080", "example.com:9090", False),
            ("10.0.0.1", "10.0.0.1:80", True),
            ("::1", "[::1]:80", True),
        ],
    )
    def test_host_patterns(self, pattern: str, authority: str, expected: bool) -> None:
        """Exact, '*', leading '*.', trailing '.*'; the port only counts if the pattern has one."""
        assert compile_host(pattern.lower())(authority) is expected

    def test_wildcard_in_the_middle_is_refused(self) -> None:
        """Only Envoy's wildcard forms are accepted."""
        with pytest.raises(ValueError, match="wildcard"):
            MatchRule.model_validate({"hosts": ["api.*.com"]})


class TestRules:
    def test_no_rules_match_everything(self) -> None:
        """An absent match means the plugin applies to every request."""
        assert compile_match([]) is None

    def test_fields_are_and_ed_and_lists_or_ed(self) -> None:
        """Within a rule every field must hold; within a list any item may."""
        rule = {"paths": [{"prefix": "/api"}, {"exact": "/health"}], "methods": ["get", "POST"]}
        assert matches([rule], request("/api/x", "GET"))
        assert matches([rule], request("/health", "POST"))
        assert not matches([rule], request("/api/x", "DELETE"))
        assert not matches([rule], request("/other", "GET"))

    def test_rules_are_or_ed(self) -> None:
        """Any rule of the list may match."""
        rules = [{"paths": [{"prefix": "/a"}]}, {"methods": ["PUT"]}]
        assert matches(rules, request("/b", "PUT"))
        assert not matches(rules, request("/b", "GET"))

    def test_path_ignores_query(self) -> None:
        """Paths match like Envoy routes: without the query string."""
        assert matches([{"paths": [{"exact": "/x"}]}], request("/x?y=1"))
        assert matches([{"paths": [{"regex": "/users/[0-9]+"}]}], request("/users/42?full=1"))
        assert not matches([{"paths": [{"regex": "/users/[0-9]+"}]}], request("/users/42/x"))

    def test_headers(self) -> None:
        """Header conditions: present, value matches, inverted."""
        rule = {
            "headers": [{"name": "X-Env", "exact": "prod"}, {"name": "x-debug", "present": False}]
        }
        assert matches([rule], request(x_env="prod"))
        assert not matches([rule], request(x_env="prod", x_debug="1"))
        assert not matches([rule], request(x_env="dev"))
        inverted = {"headers": [{"name": "x-env", "prefix": "pr", "invert": True}]}
        assert matches([inverted], request(x_env="dev"))
        assert not matches([inverted], request(x_env="prod"))

    def test_ignore_case(self) -> None:
        """Path matches can ignore case."""
        assert matches([{"paths": [{"prefix": "/API", "ignoreCase": True}]}], request("/api/x"))


class TestSelector:
    def test_namespace_and_labels(self) -> None:
        """A selector needs the namespace and every label."""
        select = compile_selector(
            Selector.model_validate({"namespace": "shop", "matchLabels": {"app": "cart"}})
        )
        assert select is not None
        assert select(Workload(namespace="shop", labels={"app": "cart", "v": "2"}))
        assert not select(Workload(namespace="shop", labels={"app": "web"}))
        assert not select(Workload(namespace="other", labels={"app": "cart"}))

    def test_unknown_workload_is_never_selected(self) -> None:
        """A plugin scoped to workloads does not apply when Envoy did not say who calls."""
        select = compile_selector(Selector.model_validate({"matchLabels": {"app": "cart"}}))
        assert select is not None
        assert not select(UNKNOWN)

    def test_empty_selector_selects_all(self) -> None:
        """No conditions: no predicate."""
        assert compile_selector(Selector()) is None


@given(
    st.from_regex(r"[a-z0-9.\-]{1,20}", fullmatch=True), st.one_of(st.none(), st.integers(1, 65535))
)
def test_split_host_port_round_trips(host: str, port: int | None) -> None:
    """Host and port come apart the way they were put together."""
    authority = host if port is None else f"{host}:{port}"
    assert split_host_port(authority) == (host, None if port is None else str(port))


@given(st.ip_addresses(v=6), st.integers(1, 65535))
def test_split_ipv6(ip, port: int) -> None:
    """Bracketed IPv6 literals lose their brackets."""
    assert split_host_port(f"[{ip}]:{port}") == (str(ip), str(port))
