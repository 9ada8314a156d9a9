"""What checking a credential yields: an identity, or the reason it was refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asm_proxy_handlers.auth.sources import Found


@dataclass(frozen=True, slots=True)
class Failure:
    """A credential that is there but not good. `reason` is a short machine word (it goes
    into %RESPONSE_CODE_DETAILS% and metadata), `description` a short sentence for the
    client (RFC 6750 error_description) that gives nothing away."""

    kind: str  # "jwt", "apiKey", "basic"
    reason: str
    description: str
    #: RFC 6750 error code for Bearer challenges.
    error: str = "invalid_token"


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str  # "jwt", "apiKey", "basic"
    consumer: str | None
    provider: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    found: Found | None = None


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (realm_access.roles);
    a name that itself contains dots (as URL-named claims do) is tried first."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
