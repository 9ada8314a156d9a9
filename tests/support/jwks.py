"""Signing keys, tokens and a real JWKS endpoint on 127.0.0.1 for the auth tests.

Keys are made with cryptography; tokens are signed with PyJWT; the JWKS is served by a
small threaded HTTP server whose key set can be swapped while requests flow (rotation).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://idp.test"
AUDIENCE = "orders-api"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        if self.alg.startswith(("RS", "PS")):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        elif self.alg.startswith("ES"):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig")
        return dict(jwk)

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=alg or self.alg, headers={"kid": self.kid, **header}
        )


@cache
def rsa_key(kid: str, bits: int = 2048, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


@cache
def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@cache
def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk for k in keys]}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "groups": ["staff", "admin"],
        "scope": "orders:read orders:write",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token with alg none (or any header), built by hand: PyJWT refuses to make one."""
    head = header or {"alg": "none", "typ": "JWT"}
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}."


class JwksServer:
    """Serves `document` as JSON at any path; counts the fetches. Start/stop by the test."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.status = 200
        self.delay = 0.0  # seconds each answer is held back (a slow issuer)
        self.fetches = 0  # requests received...
        self.answers = 0  # ...and answered
        self._lock = threading.Lock()
        self._released = threading.Event()  # cleared while answers are held (hold())
        self._released.set()
        self._hold_limit = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                    body = json.dumps(server.document).encode()
                    status = server.status
                    delay = server.delay
                    released, limit = server._released, server._hold_limit
                if delay:
                    time.sleep(delay)
                released.wait(limit)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with server._lock:
                    server.answers += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"

    def serve(self, document: dict[str, Any], status: int = 200) -> None:
        with self._lock:
            self.document = document
            self.status = status

    def hold(self, limit: float) -> None:
        """A slow issuer: answers wait until `release()`, or `limit` seconds at most."""
        with self._lock:
            self._released = threading.Event()
            self._hold_limit = limit

    def release(self) -> None:
        """Send the held answers, and answer at once from now on."""
        with self._lock:
            self._released.set()

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
