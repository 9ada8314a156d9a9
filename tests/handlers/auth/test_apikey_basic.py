"""API keys and Basic auth, through the shared test host."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import bcrypt
import pytest

from tests.handlers.auth.helpers import Hosts, allowed, auth_metadata, denied, plugin_of

KEY = "k-3f9a8c1e5b7d4a2f"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


@pytest.fixture(scope="module")
def htpasswd_line() -> str:
    # cost 4 keeps the tests fast; minCost is lowered to match in their configs.
    return "alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()


class TestApiKeys:
    def test_valid_key_names_the_consumer(self, hosts: Hosts) -> None:
        """A known key passes; the consumer header is set (a client-sent one replaced);
        the key is removed before the upstream."""
        host = hosts({"apiKeys": {"keys": [{"consumer": "billing", "sha256": sha(KEY)}]}})
        step = allowed(host.request_headers({"x-api-key": KEY, "x-consumer": "admin"}))
        assert step.headers.get_all("x-consumer") == ["billing"]
        assert "x-api-key" not in step.headers
        assert auth_metadata(step) == {
            "decision": "allow",
            "reason": "allowed",
            "kind": "apiKey",
            "consumer": "billing",
        }

    def test_unknown_and_missing_keys(self, hosts: Hosts) -> None:
        """An unknown key and no key: 401 with an ApiKey challenge."""
        host = hosts({"apiKeys": {"keys": [{"consumer": "billing", "sha256": sha(KEY)}]}})
        reply = denied(host.request_headers({"x-api-key": KEY + "x"}))
        assert reply.details == "auth_unauthorized{api_key_unknown}"
        assert reply.headers["www-authenticate"] == 'ApiKey realm="asm-proxy"'
        host.new_exchange()
        reply = denied(host.request_headers({}))
        assert reply.details == "auth_unauthorized{missing_credentials}"

    def test_key_from_query_is_removed_from_the_path(self, hosts: Hosts) -> None:
        """A key in a query parameter: accepted, and taken out of :path."""
        host = hosts(
            {
                "apiKeys": {
                    "sources": [{"query": "api_key"}],
                    "keys": [{"consumer": "billing", "sha256": sha(KEY)}],
                    "consumerHeader": "x-client",
                }
            }
        )
        step = allowed(host.request_headers({":path": f"/v1/x?api_key={KEY}&page=2"}))
        assert step.headers[":path"] == "/v1/x?page=2"
        assert step.headers["x-client"] == "billing"

    def test_key_file_reloads_and_keeps_the_last_good_one(
        self, tmp_path: Path, hosts: Hosts
    ) -> None:
        """The key file is reloaded when it changes; a bad new file is refused (with the
        reason logged) and the previous keys stay in use."""
        path = tmp_path / "keys.yaml"
        path.write_text(f"keys:\n  - {{consumer: one, sha256: {sha('key-one')}}}\n")
        host = hosts({"secretsReloadInterval": 0, "apiKeys": {"file": str(path)}})
        plugin = plugin_of(host)
        allowed(host.request_headers({"x-api-key": "key-one"}))

        path.write_text(f"keys:\n  - {{consumer: two, sha256: {sha('key-two')}}}\n")
        plugin.secrets.check_all()
        host.new_exchange()
        denied(host.request_headers({"x-api-key": "key-one"}))
        host.new_exchange()
        assert (
            allowed(host.request_headers({"x-api-key": "key-two"})).headers["x-consumer"] == "two"
        )

        path.write_text("keys:\n  - {consumer: three, key: in-clear}\n")
        plugin.secrets.check_all()
        assert "stored hashed" in (plugin.secrets.files[0].last_error or "")
        host.new_exchange()
        allowed(host.request_headers({"x-api-key": "key-two"}))

    def test_file_watcher_runs_in_the_background(self, tmp_path: Path, hosts: Hosts) -> None:
        """With a reload interval, a changed file is picked up without a manual check."""
        path = tmp_path / "keys.yaml"
        path.write_text(f"keys: [{{consumer: one, sha256: {sha('key-one')}}}]\n")
        host = hosts({"secretsReloadInterval": "20ms", "apiKeys": {"file": str(path)}})
        host.request_headers({"x-api-key": "key-one"})
        # A Kubernetes-style swap: a new file renamed over the old one.
        new = tmp_path / "keys.new"
        new.write_text(f"keys: [{{consumer: two, sha256: {sha('key-two')}}}]\n")
        new.replace(path)
        give_up = time.monotonic() + 5
        while plugin_of(host).api_keys.file.reloads == 0 and time.monotonic() < give_up:  # type: ignore[union-attr]
            host.run(__import__("asyncio").sleep(0.02))
        host.new_exchange()
        allowed(host.request_headers({"x-api-key": "key-two"}))


class TestBasic:
    def _host(self, hosts: Hosts, path: Path, **extra: object) -> object:
        return hosts({"basic": {"htpasswdFile": str(path), "minCost": 4, **extra}})

    def test_good_password(self, tmp_path: Path, hosts: Hosts, htpasswd_line: str) -> None:
        """Right user and password: the user is forwarded, Authorization removed; the
        second request is answered from the cache without bcrypt."""
        path = tmp_path / "htpasswd"
        path.write_text(f"# users\n{htpasswd_line}\n")
        host = hosts({"basic": {"htpasswdFile": str(path), "minCost": 4}})
        step = allowed(host.request_headers(basic("alice", "wonderland")))
        assert step.headers["x-consumer"] == "alice"
        assert "authorization" not in step.headers
        host.new_exchange()
        allowed(host.request_headers(basic("alice", "wonderland")))
        assert plugin_of(host).basic.bcrypt_checks == 1  # type: ignore[union-attr]

    def test_bad_passwords_and_users(
        self, tmp_path: Path, hosts: Hosts, htpasswd_line: str
    ) -> None:
        """Wrong password, unknown user (which costs a bcrypt check too), malformed
        base64, no colon: all 401 with a Basic challenge."""
        path = tmp_path / "htpasswd"
        path.write_text(htpasswd_line + "\n")
        host = hosts({"realm": "shop", "basic": {"htpasswdFile": str(path), "minCost": 4}})
        plugin = plugin_of(host)
        cases = [
            (basic("alice", "wrong"), "basic_bad_credentials"),
            (basic("bob", "wonderland"), "basic_bad_credentials"),
            ({"authorization": "Basic !!!"}, "basic_malformed"),
            (
                {"authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
                "basic_malformed",
            ),
            (basic("alice", "x" * 100), "basic_bad_credentials"),
        ]
        for headers, reason in cases:
            host.new_exchange()
            reply = denied(host.request_headers(headers))
            assert reply.details == f"auth_unauthorized{{{reason}}}"
            assert reply.headers["www-authenticate"] == 'Basic realm="shop", charset="UTF-8"'
        assert plugin.basic.bcrypt_checks == 2  # type: ignore[union-attr]

    def test_weak_file_on_reload_is_refused(
        self, tmp_path: Path, hosts: Hosts, htpasswd_line: str
    ) -> None:
        """A new htpasswd with a plain-text password is refused; the old users stay."""
        path = tmp_path / "htpasswd"
        path.write_text(htpasswd_line + "\n")
        host = hosts(
            {"secretsReloadInterval": 0, "basic": {"htpasswdFile": str(path), "minCost": 4}}
        )
        path.write_text("alice:wonderland\n")
        plugin_of(host).secrets.check_all()
        assert "plain-text" in (plugin_of(host).basic.file.last_error or "")  # type: ignore[union-attr]
        allowed(host.request_headers(basic("alice", "wonderland")))
