"""Fixtures of the auth plugin's unit tests: a real JWKS endpoint and test hosts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.handlers.auth.helpers import Hosts
from tests.support.jwks import JwksServer, ec_key, jwks, rsa_key


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    """A JWKS endpoint on 127.0.0.1 serving RSA key k1 and EC key e1."""
    server = JwksServer(jwks(rsa_key("k1"), ec_key("e1")))
    yield server
    server.stop()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    made = Hosts()
    yield made
    made.close()
