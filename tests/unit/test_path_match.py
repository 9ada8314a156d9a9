"""Path-only matches are tested on the path computed once, with the same meaning."""

from __future__ import annotations

import pytest

from asm_proxy.config import MatchRule
from asm_proxy.exchange import Exchange, Http
from asm_proxy.headers import Headers
from asm_proxy.matching import PathMatch, compile_match


def request(path: str) -> Http:
    return Exchange(Headers([(":path", path), (":method", "GET")])).http


RULES = [
    {"paths": [{"prefix": "/api/"}, {"exact": "/health"}]},
    {"paths": [{"suffix": ".json"}, {"prefix": "/ADMIN", "ignoreCase": True}]},
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/x?q=1", True),
        ("/health", True),
        ("/health?full=1", True),  # the query string is not part of the path
        ("/healthz", False),
        ("/data/a.json", True),
        ("/admin/users", True),
        ("/other", False),
    ],
)
def test_path_only_rules(path: str, expected: bool) -> None:
    """Any rule, any of its paths; prefixes, exact paths and the other kinds together."""
    match = compile_match([MatchRule.model_validate(r) for r in RULES])
    assert isinstance(match, PathMatch)
    http = request(path)
    assert match(http.request) is expected
    assert match.test(http.request.path_only) is expected


def test_rules_with_more_than_paths_are_not_path_only() -> None:
    """A method or header condition keeps the general predicate."""
    match = compile_match(
        [MatchRule.model_validate({"paths": [{"prefix": "/a"}], "methods": ["POST"]})]
    )
    assert match is not None and not isinstance(match, PathMatch)
    assert match(request("/a").request) is False


def test_path_only_is_recomputed_when_the_path_changes() -> None:
    """The cached path without query follows a plugin's change to :path."""
    http = request("/a?x=1")
    assert http.request.path_only == "/a"
    http.request.path = "/b/c?y=2"
    assert http.request.path_only == "/b/c"
