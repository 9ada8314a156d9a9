"""Shared test settings: hypothesis profiles and the CI switch."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

#: Every transport the protocol and integration tests run over (asm_proxy/transport/).
TRANSPORTS = ("grpcio", "nghttp2")

settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default")
)


@pytest.fixture(scope="session", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """A test that takes this fixture runs once per transport."""
    name: str = request.param
    return name
