"""Logs through real Envoy: the auth plugin's decision log (one line per decision, as OPA's
decision logs) and no secret anywhere in what asm-proxy logs, in either format: tokens,
API keys, passwords, their hashes, a secret query parameter."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path

import orjson
import pytest

from asm_proxy.logs import JsonFormatter, TextFormatter
from tests.integration.conftest import StackFactory
from tests.integration.test_auth import API_KEY, config, idp  # noqa: F401 - idp: a fixture
from tests.support.jwks import JwksServer, claims, rsa_key, unsigned_token

PASSWORD = "s3cret"  # carol's, in test_auth's htpasswd


def test_decisions_are_logged_and_secrets_never(
    stack: StackFactory,
    idp: JwksServer,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asm_proxy")
    s = stack("decisionLog: all\n" + config(idp, tmp_path))
    good = rsa_key("k1").sign(claims())
    expired = rsa_key("k1").sign(claims(exp=int(time.time()) - 3600))
    forged = unsigned_token(claims()) + "c2ln"  # alg none: the classic attack
    basic_good = base64.b64encode(f"carol:{PASSWORD}".encode()).decode()
    basic_bad = base64.b64encode(b"carol:guess-again").decode()
    sent = [
        ({"authorization": f"Bearer {good}"}, "/orders", 200),
        ({"authorization": f"Bearer {expired}"}, "/orders", 401),
        ({"authorization": f"Bearer {forged}"}, "/orders", 401),
        ({"x-api-key": API_KEY}, "/orders", 200),
        ({}, f"/orders?api_key={API_KEY}&page=2", 200),
        ({"authorization": f"Basic {basic_good}"}, "/orders", 200),
        ({"authorization": f"Basic {basic_bad}"}, "/orders", 401),
        ({}, "/orders", 401),
    ]
    for headers, path, status in sent:
        assert s.get(path, headers=headers).status_code == status, path
    records = [r for r in caplog.records if r.name.startswith("asm_proxy")]
    decisions = [r for r in records if getattr(r, "event", None) == "decision"]
    lines = [orjson.loads(JsonFormatter().format(r)) for r in decisions]
    assert [(line["data"]["decision"], line["data"]["status"]) for line in lines] == [
        ("allow", 200),
        ("deny", 401),
        ("deny", 401),
        ("allow", 200),
        ("allow", 200),
        ("allow", 200),
        ("deny", 401),
        ("deny", 401),
    ]
    first, second, third = lines[:3]
    assert first["plugin"] == "auth" and first["logger"] == "asm_proxy.decision"
    assert first["data"]["consumer"] == "alice" and first["data"]["credential"] == "jwt"
    assert first["request_id"]  # Envoy's x-request-id: joins the access log line
    assert second["data"]["reason"] == "jwt_expired"
    assert third["data"]["reason"] == "jwt_alg_none"
    assert lines[4]["data"]["path"] == "/orders"  # the query (holding the key) is left out
    assert lines[5]["data"]["consumer"] == "carol"
    assert lines[7]["data"]["reason"] == "missing_credentials"
    # Nothing logged holds a credential or what derives from one: not the raw records
    # (before the formatters' scrubbing, which is only a second line of defence) and not
    # what either format writes.
    secrets = [
        good,
        good.rsplit(".", 1)[1],  # a signature alone
        expired,
        forged,
        API_KEY,
        hashlib.sha256(API_KEY.encode()).hexdigest(),
        PASSWORD,
        basic_good,
        basic_bad,
    ]
    raw = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    text = "\n".join(JsonFormatter().format(r) + "\n" + TextFormatter().format(r) for r in records)
    assert len(records) >= len(sent)
    for secret in secrets:
        assert secret not in raw, f"a secret is logged: {secret[:12]}..."
        assert secret not in text, f"a secret is in the log: {secret[:12]}..."


def test_deny_only_by_default(
    stack: StackFactory,
    idp: JwksServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """decisionLog defaults to deny: refusals are logged, allowed requests are not."""
    caplog.set_level(logging.INFO, logger="asm_proxy.decision")
    s = stack(config(idp, tmp_path))
    s.get("/orders", headers={"x-api-key": API_KEY})
    s.get("/orders")
    decided = [r for r in caplog.records if getattr(r, "event", None) == "decision"]
    assert [r.data["decision"] for r in decided] == ["deny"]  # type: ignore[attr-defined]
