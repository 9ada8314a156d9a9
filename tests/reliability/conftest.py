"""Fixtures of the short drills: `figures` keeps what a drill measured without asserting it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.record import record


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[Any], Path]:
    """figures(result): write a drill's result to results/suite/MODULE.TEST.json
    (record.py)."""

    def write(result: Any) -> Path:
        return record(f"{request.node.path.stem}.{request.node.name}", result)

    return write
