"""The `auth` plugin: JWT, API keys and Basic, with per-path rules, on request headers.

One decision per request, the same in the ext_proc chain (a Respond becomes an immediate
response) and behind ext_authz (a Respond becomes the denied response):

1. The first rule matching the request says which credentials count, whether a request
   with none may pass (`anonymous`) and what the identity must be (`require`).
2. Identity headers this plugin sets are removed from the incoming request first, so a
   client can never supply them itself.
3. The credentials present are checked in order JWT, API key, Basic; the first valid one
   is the identity. None present: anonymous passes, else 401 with a challenge per
   accepted scheme. Present but invalid: 401 naming why (RFC 6750 error for Bearer).
4. `require` not met: 403.
5. Allowed: the credential is removed (unless configured to be forwarded), the identity
   goes into headers and dynamic metadata.

In `dryRun` the decision is computed, logged and counted, and the request goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from asm_proxy.api import FilesWatcher, Http, Plugin, Respond, WatchedFile
from asm_proxy_handlers.auth.apikey import ApiKeys
from asm_proxy_handlers.auth.basic import SOURCE as BASIC_SOURCE
from asm_proxy_handlers.auth.basic import BasicAuth
from asm_proxy_handlers.auth.config import AuthConfig
from asm_proxy_handlers.auth.identity import Failure, Identity, claim_at
from asm_proxy_handlers.auth.jwt import Provider, peek
from asm_proxy_handlers.auth.rules import CompiledRule, Rules
from asm_proxy_handlers.auth.sources import Ambiguous, Found, Source, find

log = logging.getLogger("asm_proxy.plugin.auth")

_KIND_ORDER = ("jwt", "apiKey", "basic")


def _header_value(value: Any) -> str | None:
    """A claim as a header value: strings as they are, lists comma-joined, others as
    JSON-ish text; None if it cannot be a header value (control characters)."""
    if value is None:
        return None
    if isinstance(value, list):
        text = ",".join(_header_value(v) or "" for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    else:
        text = str(value)
    if any(ch in text for ch in "\r\n\x00"):
        return None
    return text


class Decision:
    """What the plugin decided for one request."""

    __slots__ = ("failure", "identity", "kinds", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        identity: Identity | None = None,
        failure: Failure | None = None,
        kinds: tuple[str, ...] = (),
    ) -> None:
        self.status = status  # 200, 401 or 403
        self.reason = reason
        self.identity = identity
        self.failure = failure
        self.kinds = kinds  # credential kinds the rule accepts (for challenges)


class AuthPlugin(Plugin):
    """Authentication (JWT / API key / Basic) and simple authorization by rules."""

    Config = AuthConfig
    guards_access = True

    def __init__(self, config: AuthConfig) -> None:
        super().__init__(config)
        self.providers: dict[str, Provider] = {}
        if config.jwt is not None:
            for p in config.jwt.providers:
                self.providers[p.name] = Provider(p, log)
        self.api_keys = ApiKeys(config.api_keys, log) if config.api_keys else None
        self.basic = BasicAuth(config.basic, log) if config.basic else None
        self.rules = Rules(config)
        files: list[WatchedFile[Any]] = []
        for provider in self.providers.values():
            files += provider.watched()
        if self.api_keys is not None and self.api_keys.file is not None:
            files.append(self.api_keys.file)
        if self.basic is not None:
            files.append(self.basic.file)
        self.secrets = FilesWatcher(files, config.secrets_reload_interval)
        # Headers that carry identity: set only by this plugin, removed from every request.
        owned: set[str] = set()
        for p in config.jwt.providers if config.jwt else ():
            owned.update(p.claims_to_headers)
        if config.api_keys is not None:
            owned.add(config.api_keys.consumer_header)
        if config.basic is not None:
            owned.add(config.basic.user_header)
        self.identity_headers = tuple(sorted(owned))
        realm = config.realm
        self._challenge = {
            "jwt": f'Bearer realm="{realm}"',
            "apiKey": f'ApiKey realm="{realm}"',
            "basic": f'Basic realm="{realm}", charset="UTF-8"',
        }
        self.decisions = self.counter(
            "auth_decisions_total",
            "Access decisions by verdict (allow, deny, dry_run_deny), HTTP status and reason",
            labels=["decision", "status", "reason"],
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        started: list[Provider] = []
        try:
            for provider in self.providers.values():
                await provider.start()
                started.append(provider)
        except BaseException:
            for provider in started:
                await provider.close()
            raise
        self.secrets.start()

    async def close(self) -> None:
        await self.secrets.stop()
        for provider in self.providers.values():
            await provider.close()

    # -- the hook ----------------------------------------------------------------------

    async def on_request_headers(self, http: Http) -> Respond | None:
        headers = http.request.headers
        for name in self.identity_headers:
            if name in headers:
                headers.remove(name)
        rule = self.rules.for_request(http.request)
        decision = await self.decide(http, rule)
        if decision.status == 200:
            verdict = "allow"
        else:
            verdict = "dry_run_deny" if self.config.dry_run else "deny"
        self.decisions.labels(verdict, str(decision.status), decision.reason).inc()
        identity = decision.identity
        self.log_decision(
            http,
            allowed=decision.status == 200,
            reason=decision.reason,
            status=decision.status,
            dry_run=self.config.dry_run,
            credential=identity.kind if identity is not None else None,
            consumer=identity.consumer if identity is not None else None,
            provider=identity.provider if identity is not None else None,
        )
        if decision.status == 200:
            self._allow(http, decision)
            return None
        respond = self._respond(decision)
        if self.config.dry_run:
            self.log.info(
                "%s: dry run: would answer %d (%s) to %s %s",
                self.name,
                decision.status,
                decision.reason,
                http.request.method,
                http.request.path_only,
            )
            self._metadata(http, decision, "dry_run_deny")
            return None
        self._metadata(http, decision, "deny")
        return respond

    # -- deciding ----------------------------------------------------------------------

    async def decide(self, http: Http, rule: CompiledRule) -> Decision:
        kinds = tuple(
            k
            for k, on in zip(
                _KIND_ORDER, (bool(rule.providers), rule.api_key, rule.basic), strict=True
            )
            if on
        )
        failures: list[Failure] = []
        presented = False
        identity: Identity | None = None
        for kind in kinds:
            try:
                if kind == "jwt":
                    result = await self._jwt(http, rule.providers)
                elif kind == "apiKey":
                    result = self._api_key(http)
                else:
                    result = await self._basic(http)
            except Ambiguous as exc:
                result = Failure(
                    kind,
                    "ambiguous_credentials",
                    f"more than one credential in {exc}",
                    error="invalid_request",
                )
            if result is None:
                continue
            presented = True
            if isinstance(result, Identity):
                identity = result
                break
            failures.append(result)
        if identity is None:
            if failures:
                return Decision(401, failures[0].reason, failure=failures[0], kinds=kinds)
            if rule.anonymous and not presented:
                return Decision(200, "anonymous", kinds=kinds)
            return Decision(401, "missing_credentials", kinds=kinds)
        if rule.require is not None:
            why = rule.require(identity)
            if why is not None:
                return Decision(403, why, identity=identity, kinds=kinds)
        return Decision(200, "allowed", identity=identity, kinds=kinds)

    async def _jwt(self, http: Http, names: tuple[str, ...]) -> Identity | Failure | None:
        """The first provider whose token verifies; else the most telling failure."""
        failures: list[Failure] = []
        peeked: dict[str, tuple[dict[str, Any], dict[str, Any]] | Failure] = {}
        for name in names:
            provider = self.providers[name]
            found = _first(http, provider.config.sources)
            if found is None:
                continue
            token = found.value
            if len(token) > provider.config.max_token_bytes:
                failures.append(Failure("jwt", "jwt_too_large", "the token is too large"))
                continue
            if token not in peeked:
                peeked[token] = peek(token)
            seen = peeked[token]
            if isinstance(seen, Failure):
                failures.append(seen)
                continue
            header, payload = seen
            if payload.get("iss") != provider.config.issuer:
                failures.append(
                    Failure("jwt", "jwt_wrong_issuer", "the token's issuer is not accepted")
                )
                continue
            result = await provider.verify(found, header)
            if isinstance(result, Identity):
                return result
            failures.insert(0, result)  # a provider of this issuer explains it best
        if not failures:
            return None
        return failures[0]

    def _api_key(self, http: Http) -> Identity | Failure | None:
        assert self.api_keys is not None
        found = _first(http, self.api_keys.config.sources)
        return None if found is None else self.api_keys.check(found)

    async def _basic(self, http: Http) -> Identity | Failure | None:
        assert self.basic is not None
        found = find(http, BASIC_SOURCE)
        return None if found is None else await self.basic.check(found)

    # -- answering ---------------------------------------------------------------------

    def _allow(self, http: Http, decision: Decision) -> None:
        identity = decision.identity
        if identity is None:
            self._metadata(http, decision, "allow")
            return
        headers = http.request.headers
        forward = False
        if identity.kind == "jwt":
            assert identity.provider is not None
            provider = self.providers[identity.provider].config
            forward = provider.forward_token
            for header, claim in provider.claims_to_headers.items():
                value = _header_value(claim_at(identity.claims, claim))
                if value is not None:
                    headers.set(header, value)
        elif identity.kind == "apiKey":
            assert self.api_keys is not None
            forward = self.api_keys.config.forward_key
            if identity.consumer is not None:
                headers.set(self.api_keys.config.consumer_header, identity.consumer)
        else:
            assert self.basic is not None
            forward = self.basic.config.forward_credentials
            if identity.consumer is not None:
                value = _header_value(identity.consumer)
                if value is not None:
                    headers.set(self.basic.config.user_header, value)
        if not forward and identity.found is not None:
            identity.found.remove(http)
        self._metadata(http, decision, "allow")

    def _metadata(self, http: Http, decision: Decision, verdict: str) -> None:
        key = self.config.metadata_key
        if not key:
            return
        doc: dict[str, Any] = {"decision": verdict, "reason": decision.reason}
        if verdict != "allow":
            doc["status"] = decision.status
        identity = decision.identity
        if identity is not None:
            doc["kind"] = identity.kind
            if identity.consumer is not None:
                doc["consumer"] = identity.consumer
            if identity.provider is not None:
                doc["provider"] = identity.provider
                wanted = self.providers[identity.provider].config.claims_to_metadata
                if "*" in wanted:
                    doc["claims"] = identity.claims
                elif wanted:
                    doc["claims"] = {
                        c: v for c in wanted if (v := claim_at(identity.claims, c)) is not None
                    }
        http.set_metadata(key, doc)

    def _respond(self, decision: Decision) -> Respond:
        # One WWW-Authenticate field listing every challenge (RFC 9110 section 11.6.1):
        # Envoy's ext_authz keeps only one value per header name in a denied response.
        challenges: list[str] = []
        failure = decision.failure
        if decision.status == 401:
            for kind in decision.kinds:
                value = self._challenge[kind]
                if failure is not None and failure.kind == kind and kind == "jwt":
                    value += f', error="{failure.error}", error_description="{failure.description}"'
                challenges.append(value)
            if failure is not None:
                body = f"unauthorized: {failure.description}\n"
            else:
                body = "unauthorized: credentials are required\n"
            details = f"auth_unauthorized{{{decision.reason}}}"
        else:
            identity = decision.identity
            if identity is not None and identity.kind == "jwt":
                challenges.append(
                    self._challenge["jwt"] + ', error="insufficient_scope", '
                    'error_description="the token does not grant access to this resource"'
                )
            body = "forbidden: access to this resource is not granted\n"
            details = f"auth_forbidden{{{decision.reason}}}"
        headers = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}
        if challenges:
            headers["www-authenticate"] = ", ".join(challenges)
        return Respond(decision.status, body=body, headers=headers, details=details)


def _first(http: Http, sources: list[Source]) -> Found | None:
    for source in sources:
        found = find(http, source)
        if found is not None:
            return found
    return None
