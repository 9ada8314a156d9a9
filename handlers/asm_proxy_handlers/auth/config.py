"""The `auth` plugin's configuration, checked completely at load time.

Everything that makes a config insecure is refused here, so `asm-proxy validate` names the
file, plugin and field: `alg: none`, HMAC without a secret (or with a short one), a
provider with no keys, JWKS over plain HTTP to anything but loopback, keys stored in
clear, plain-text or weak password hashes, rules naming credentials that do not exist.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from asm_proxy.api import Duration, Headers, MatchRule, PluginConfig, read_secret_file
from asm_proxy_handlers.auth.jwks import (
    ALL_ALGS,
    ASYMMETRIC_ALGS,
    HMAC_ALGS,
    parse_hmac_secret,
    parse_jwks,
)
from asm_proxy_handlers.auth.keyfiles import ApiKeyEntry, parse_htpasswd, parse_key_file
from asm_proxy_handlers.auth.sources import Source

_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _header_name(value: str) -> str:
    Headers().set(value, "")  # raises ValueError naming the problem
    if value.startswith(":"):
        raise ValueError(f"{value!r}: pseudo-headers cannot carry identity")
    return value.lower()


def _check_file(path: str, parse: Any) -> str:
    """Read and parse a secrets file now, so `validate` reports it at its field."""
    parse(read_secret_file(Path(path)))
    return path


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwtProvider(PluginConfig):
    """One token issuer: who it is, which keys and algorithms, where its tokens are."""

    name: str
    issuer: str
    audiences: list[str]
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    #: Exactly one key source for RS/PS/ES/EdDSA; hmacSecretFile for HS256/384/512.
    jwks_uri: str | None = None
    jwks_file: str | None = None
    jwks: dict[str, Any] | None = None
    hmac_secret_file: str | None = None
    #: Where the token is looked for, in this order.
    sources: list[Source] = Field(
        default_factory=lambda: [Source(header="authorization", prefix="Bearer ")]
    )
    clock_skew: Duration = 60.0
    #: Tokens without an `exp` are refused unless this is false.
    require_exp: bool = True
    max_token_bytes: int = 8192
    #: Tokens already verified, kept (most recent first) so a client's next request with
    #: the same token skips the signature check, as Envoy's jwt_authn `jwt_cache_config`.
    #: An entry holds until the token's `exp` (plus clockSkew) and goes when the keys
    #: change. 0 turns it off.
    verified_cache_size: int = Field(default=100, ge=0, le=100_000)
    #: Keep the token in the request for the upstream (default: removed).
    forward_token: bool = False
    #: header name -> claim (dotted path for nested claims, e.g. realm_access.roles).
    claims_to_headers: dict[str, str] = Field(default_factory=dict)
    #: Claims put in the dynamic metadata; ["*"] for the whole payload.
    claims_to_metadata: list[str] = Field(default_factory=list)
    #: The claim naming the caller (rules' `consumers`, the consumer header, metadata).
    consumer_claim: str = "sub"
    # Remote JWKS behaviour.
    refresh_interval: Duration = 600.0
    min_refetch_interval: Duration = 30.0
    fetch_timeout: Duration = 5.0
    #: How long a request with an unknown kid waits for the refetch it triggered (keep it
    #: well below the message deadline: past it the request is refused, the fetch goes on).
    key_fetch_wait: Duration = 0.1
    max_jwks_bytes: int = 1024 * 1024

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PROVIDER_NAME.match(value):
            raise ValueError(f"name {value!r}: letters, digits, '.', '_', '-' (at most 63)")
        return value

    @field_validator("consumer_claim")
    @classmethod
    def _consumer_claim(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("consumerClaim must name a claim")
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("issuer must not be empty: every token's iss is checked against it")
        return value

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: list[str]) -> list[str]:
        if not value or not all(a.strip() for a in value):
            raise ValueError(
                "list the audiences this service accepts (RFC 8725 section 3.9); "
                "a token for another service must not be accepted here"
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one algorithm")
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("alg 'none' (unsigned tokens) is never accepted")
            if alg not in ALL_ALGS:
                raise ValueError(f"unknown algorithm {alg!r}; use one of {sorted(ALL_ALGS)}")
        return list(dict.fromkeys(value))

    @field_validator("claims_to_headers")
    @classmethod
    def _claim_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return {_header_name(k): v for k, v in value.items()}

    @field_validator("max_token_bytes", "max_jwks_bytes")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @field_validator("clock_skew")
    @classmethod
    def _skew(cls, value: float) -> float:
        if value > 300:
            raise ValueError("clock skew above 5m makes expiry meaningless; fix the clocks")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[Source]) -> list[Source]:
        if not value:
            raise ValueError("give at least one place to look for the token")
        return value

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        return _check_file(value, lambda data: parse_jwks(data, algorithms))

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        algorithms = info.data.get("algorithms")
        if value is not None and algorithms is not None:
            parse_jwks(value, algorithms)
        return value

    @field_validator("hmac_secret_file")
    @classmethod
    def _secret_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        algorithms = info.data.get("algorithms")
        if value is None or algorithms is None:
            return value
        return _check_file(value, lambda data: parse_hmac_secret(data, algorithms))

    @field_validator("jwks_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(
                "keys fetched over plain http can be replaced in transit; use https "
                "(plain http is accepted only for loopback addresses)"
            )
        return value

    @model_validator(mode="after")
    def _keys(self) -> JwtProvider:
        hmac = [a for a in self.algorithms if a in HMAC_ALGS]
        asym = [a for a in self.algorithms if a in ASYMMETRIC_ALGS]
        key_sources = [k for k in ("jwks_uri", "jwks_file", "jwks") if getattr(self, k) is not None]
        if hmac and asym:
            raise ValueError(
                f"algorithms mixes HMAC {hmac} with public-key {asym}; use one provider each "
                "(RFC 8725 section 2.1)"
            )
        if hmac:
            if self.hmac_secret_file is None:
                raise ValueError(f"{hmac} need hmacSecretFile (a mounted secret)")
            if key_sources:
                raise ValueError(f"{key_sources[0]} holds public keys; {hmac} use hmacSecretFile")
        else:
            if self.hmac_secret_file is not None:
                raise ValueError("hmacSecretFile is given but algorithms has no HS256/384/512")
            if not key_sources:
                raise ValueError("the provider has no keys: give jwksUri, jwksFile or jwks")
            if len(key_sources) > 1:
                raise ValueError(f"give one key source, not {key_sources}")
        return self


class JwtConfig(PluginConfig):
    providers: list[JwtProvider]

    @field_validator("providers")
    @classmethod
    def _unique(cls, value: list[JwtProvider]) -> list[JwtProvider]:
        if not value:
            raise ValueError("list at least one provider")
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider names must be unique: {dupes}")
        return value


class ApiKeyConfig(PluginConfig):
    sources: list[Source] = Field(default_factory=lambda: [Source(header="x-api-key")])
    keys: list[ApiKeyEntry] = Field(default_factory=list)
    #: A YAML/JSON file `{keys: [{consumer, sha256}]}`, reloaded when it changes.
    file: str | None = None
    consumer_header: str = "x-consumer"
    forward_key: bool = False
    max_key_bytes: int = 512

    @field_validator("consumer_header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        return value if value is None else _check_file(value, parse_key_file)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[Source]) -> list[Source]:
        if not value:
            raise ValueError("give at least one place to look for the key")
        return value

    @model_validator(mode="after")
    def _some_keys(self) -> ApiKeyConfig:
        if not self.keys and self.file is None:
            raise ValueError("no API keys: give keys or file")
        return self


class BasicConfig(PluginConfig):
    #: bcrypt cost below this is refused (OWASP: 10 or more).
    min_cost: int = 10
    #: An htpasswd file of bcrypt hashes (`htpasswd -B -C 10`), reloaded when it changes.
    htpasswd_file: str
    user_header: str = "x-consumer"
    #: Keep the Authorization header for the upstream (default: removed).
    forward_credentials: bool = False
    #: Successful checks are remembered this long, so bcrypt runs once per user and password.
    cache_ttl: Duration = 300.0
    #: bcrypt checks running at once (each takes a core for ~50-100 ms at cost 10).
    max_concurrent_checks: int = 2

    @field_validator("user_header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("min_cost")
    @classmethod
    def _cost(cls, value: int) -> int:
        if not 4 <= value <= 31:
            raise ValueError("bcrypt cost is between 4 and 31")
        return value

    @field_validator("htpasswd_file")
    @classmethod
    def _htpasswd(cls, value: str, info: ValidationInfo) -> str:
        min_cost = info.data.get("min_cost")
        if min_cost is None:
            return value
        return _check_file(value, lambda data: parse_htpasswd(data, min_cost))

    @field_validator("max_concurrent_checks")
    @classmethod
    def _concurrency(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value


Credential = str  # "jwt", "jwt:<provider>", "apiKey", "basic"


class Require(PluginConfig):
    """Authorization on the verified identity; every condition given must hold."""

    #: The caller must be one of these (API key consumer, basic user, JWT consumerClaim).
    consumers: list[str] = Field(default_factory=list)
    #: claim -> accepted value(s); the claim (or one of its items, if it is a list)
    #: must equal one of them. `scope` / `scp` strings are split on spaces (RFC 8693).
    claims: dict[str, str | list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> Require:
        if not self.consumers and not self.claims:
            raise ValueError("require needs consumers or claims")
        for claim, wanted in self.claims.items():
            if isinstance(wanted, list) and not wanted:
                raise ValueError(f"claims.{claim}: list at least one accepted value")
        return self


class Rule(PluginConfig):
    """Policy for the requests it matches; the first matching rule decides."""

    match: list[MatchRule] = Field(default_factory=list)
    #: Accepted credentials; default: every kind configured.
    credentials: list[Credential] | None = None
    #: Requests with no credential at all are let through (a present but invalid one is not).
    anonymous: bool = False
    require: Require | None = None

    @field_validator("credentials")
    @classmethod
    def _kinds(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for item in value:
            kind, _, provider = item.partition(":")
            if kind not in ("jwt", "apiKey", "basic") or (provider and kind != "jwt"):
                raise ValueError(
                    f"credential {item!r}: use jwt, jwt:<provider name>, apiKey or basic"
                )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        if self.credentials is not None and not self.credentials and not self.anonymous:
            raise ValueError(
                "a rule with no credentials and no anonymous access refuses everything; "
                "use the direct_response plugin to block requests"
            )
        if self.anonymous and self.require is not None:
            raise ValueError("anonymous requests have no identity to check; drop require")
        return self


class AuthConfig(PluginConfig):
    jwt: JwtConfig | None = None
    api_keys: ApiKeyConfig | None = None
    basic: BasicConfig | None = None
    rules: list[Rule] = Field(default_factory=list)
    #: Named in WWW-Authenticate challenges.
    realm: str = "asm-proxy"
    #: Compute, log and count the decision, but let every request through.
    dry_run: bool = False
    #: Dynamic metadata key for the decision and identity ("" for none).
    metadata_key: str = "auth"
    #: How often secrets files are checked for changes (0: never reloaded).
    secrets_reload_interval: Duration = 1.0

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str) -> str:
        if '"' in value or "\\" in value or not value.isprintable():
            raise ValueError("realm must be printable, without quotes or backslashes")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> AuthConfig:
        if self.jwt is None and self.api_keys is None and self.basic is None:
            raise ValueError("configure at least one of jwt, apiKeys, basic")
        providers = {p.name for p in self.jwt.providers} if self.jwt else set()
        configured = {
            "jwt": self.jwt is not None,
            "apiKey": self.api_keys is not None,
            "basic": self.basic is not None,
        }
        for i, rule in enumerate(self.rules):
            for item in rule.credentials or ():
                kind, _, provider = item.partition(":")
                if not configured[kind]:
                    raise ValueError(f"rules[{i}]: credential {item!r} is not configured")
                if provider and provider not in providers:
                    raise ValueError(f"rules[{i}]: there is no jwt provider named {provider!r}")
        return self


Kind = Literal["jwt", "apiKey", "basic"]
