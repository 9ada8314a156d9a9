"""`match` and `selector` compiled once at load into plain predicates.

Per exchange the chain only calls the predicates; no regex is compiled and no config is
walked on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from asm_proxy.config import HeaderMatch, MatchRule, Selector, StringMatch
from asm_proxy.exchange import Request
from asm_proxy.hosts import split_host_port
from asm_proxy.identity import Workload

StrPredicate = Callable[[str], bool]
RequestPredicate = Callable[[Request], bool]
WorkloadPredicate = Callable[[Workload], bool]


def _always(_: object) -> bool:
    return True


def compile_string(m: StringMatch | HeaderMatch) -> StrPredicate:
    ignore_case = getattr(m, "ignore_case", False)
    if not ignore_case:  # the common case, without a case-folding call per test
        if m.exact is not None:
            exact_value = m.exact
            return lambda s: s == exact_value
        if m.prefix is not None:
            prefix = m.prefix
            return lambda s: s.startswith(prefix)
        if m.suffix is not None:
            suffix = m.suffix
            return lambda s: s.endswith(suffix)
        if m.contains is not None:
            part = m.contains
            return lambda s: part in s
    else:
        if m.exact is not None:
            exact = m.exact.lower()
            return lambda s: s.lower() == exact
        if m.prefix is not None:
            prefix = m.prefix.lower()
            return lambda s: s.lower().startswith(prefix)
        if m.suffix is not None:
            suffix = m.suffix.lower()
            return lambda s: s.lower().endswith(suffix)
        if m.contains is not None:
            part = m.contains.lower()
            return lambda s: part in s.lower()
    if m.regex is not None:
        pattern = re.compile(m.regex, re.IGNORECASE if ignore_case else 0)
        return lambda s: pattern.fullmatch(s) is not None
    return _always


def compile_host(pattern: str) -> Callable[[str], bool]:
    """'*', 'example.com', '*.example.com', 'example.*', optionally with ':port'."""
    with_port = split_host_port(pattern)[1] is not None

    def subject(authority: str) -> str:
        return authority.lower() if with_port else split_host_port(authority)[0].lower()

    if pattern == "*":
        return _always
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return lambda a: (s := subject(a)).endswith(suffix) and len(s) > len(suffix)
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        return lambda a: (s := subject(a)).startswith(prefix) and len(s) > len(prefix)
    return lambda a: subject(a) == pattern


def compile_header(m: HeaderMatch) -> RequestPredicate:
    name = m.name
    if m.present is not None or not any(
        v is not None for v in (m.exact, m.prefix, m.suffix, m.contains, m.regex)
    ):
        want = True if m.present is None else m.present

        def present(req: Request) -> bool:
            return (name in req.headers) is want

        test = present
    else:
        value_ok = compile_string(m)

        def valued(req: Request) -> bool:
            return any(value_ok(v) for v in req.headers.get_all(name))

        test = valued
    if m.invert:
        return lambda req: not test(req)
    return test


def compile_rule(rule: MatchRule) -> RequestPredicate:
    checks: list[RequestPredicate] = []
    if rule.methods:
        methods = frozenset(rule.methods)
        checks.append(lambda req: req.method in methods)
    if rule.hosts:
        hosts = [compile_host(h) for h in rule.hosts]
        if len(hosts) == 1:
            host = hosts[0]
            checks.append(lambda req: host(req.authority))
        else:
            checks.append(lambda req: any(h(req.authority) for h in hosts))
    if rule.paths:
        paths = [compile_string(p) for p in rule.paths]
        if len(paths) == 1:
            path = paths[0]
            checks.append(lambda req: path(req.path_only))
        else:
            checks.append(lambda req: any(p(req.path_only) for p in paths))
    checks.extend(compile_header(h) for h in rule.headers)
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    return lambda req: all(check(req) for check in checks)


class PathMatch:
    """A `match` that looks at nothing but the path: the chain computes the path once per
    exchange and calls `test(path)` for each such plugin. Prefixes are tested in one
    `str.startswith(tuple)` call, exact paths with one set lookup."""

    __slots__ = ("test",)

    def __init__(self, matches: Sequence[StringMatch]) -> None:
        prefixes = tuple(m.prefix for m in matches if m.prefix is not None and not m.ignore_case)
        exacts = frozenset(m.exact for m in matches if m.exact is not None and not m.ignore_case)
        others = [
            compile_string(m)
            for m in matches
            if not ((m.prefix is not None or m.exact is not None) and not m.ignore_case)
        ]
        if not others and not exacts:
            self.test: StrPredicate = lambda path: path.startswith(prefixes)
        elif not others and not prefixes:
            self.test = exacts.__contains__
        else:

            def test(path: str) -> bool:
                return (
                    path in exacts
                    or (bool(prefixes) and path.startswith(prefixes))
                    or any(other(path) for other in others)
                )

            self.test = test

    def __call__(self, req: Request) -> bool:
        return self.test(req.path_only)


def compile_match(rules: Sequence[MatchRule]) -> RequestPredicate | None:
    """None when there is no condition (the plugin applies to every request)."""
    if not rules:
        return None
    if all(r.paths and not (r.methods or r.hosts or r.headers) for r in rules):
        return PathMatch([p for r in rules for p in r.paths])
    compiled = [compile_rule(r) for r in rules]
    if len(compiled) == 1:
        return compiled[0]
    return lambda req: any(rule(req) for rule in compiled)


def compile_selector(selector: Selector | None) -> WorkloadPredicate | None:
    """None when every workload is selected. A selector never matches an unknown workload."""
    if selector is None or (not selector.namespaces and not selector.match_labels):
        return None
    namespaces = frozenset(selector.namespaces)
    labels = tuple(selector.match_labels.items())

    def selects(workload: Workload) -> bool:
        if namespaces and workload.namespace not in namespaces:
            return False
        have = workload.labels
        return all(have.get(k) == v for k, v in labels)

    return selects
