"""Rules: per host/path/method, which credentials are accepted, whether anonymous requests
pass, and what the verified identity must be. Compiled once; the first matching rule
decides, and a request no rule matches gets the default: every configured credential,
no anonymous access, no further requirement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asm_proxy.api import Request, RequestPredicate, compile_match
from asm_proxy_handlers.auth.config import AuthConfig, Require, Rule
from asm_proxy_handlers.auth.identity import Identity, claim_at

#: Returns None when the identity may pass, else the reason it may not.
Check = Callable[[Identity], str | None]

_SPACE_SEPARATED = frozenset({"scope", "scp"})


def _claim_values(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [_scalar(v) for v in value if not isinstance(v, dict | list)]
    if isinstance(value, str) and name.rsplit(".", 1)[-1] in _SPACE_SEPARATED:
        return value.split()
    if isinstance(value, dict):
        return []
    return [_scalar(value)]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_require(require: Require | None) -> Check | None:
    if require is None:
        return None
    consumers = frozenset(require.consumers)
    claims = [
        (name, frozenset(wanted if isinstance(wanted, list) else [wanted]))
        for name, wanted in require.claims.items()
    ]

    def check(identity: Identity) -> str | None:
        if consumers and identity.consumer not in consumers:
            return "consumer_not_allowed"
        for name, wanted in claims:
            if wanted.isdisjoint(_claim_values(name, claim_at(identity.claims, name))):
                return "claim_not_allowed"
        return None

    return check


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int  # -1: the default rule
    matches: RequestPredicate | None
    providers: tuple[str, ...]  # jwt providers accepted, in config order
    api_key: bool
    basic: bool
    anonymous: bool
    require: Check | None


def _compile(index: int, rule: Rule, config: AuthConfig) -> CompiledRule:
    all_providers = tuple(p.name for p in config.jwt.providers) if config.jwt else ()
    if rule.credentials is None:
        providers, api_key, basic = (
            all_providers,
            config.api_keys is not None,
            config.basic is not None,
        )
    else:
        named = set(rule.credentials)
        providers = tuple(p for p in all_providers if "jwt" in named or f"jwt:{p}" in named)
        api_key, basic = "apiKey" in named, "basic" in named
    return CompiledRule(
        index=index,
        matches=compile_match(rule.match),
        providers=providers,
        api_key=api_key,
        basic=basic,
        anonymous=rule.anonymous,
        require=compile_require(rule.require),
    )


class Rules:
    def __init__(self, config: AuthConfig) -> None:
        self.rules = tuple(_compile(i, r, config) for i, r in enumerate(config.rules))
        self.default = _compile(-1, Rule(), config)

    def for_request(self, request: Request) -> CompiledRule:
        for rule in self.rules:
            if rule.matches is None or rule.matches(request):
                return rule
        return self.default
