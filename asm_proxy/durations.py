"""Durations written the way Envoy and Istio write them: "50ms", "1.5s", "2m"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds, from "250ms" / "1s" / "2m" / "1h" / "100us", or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 50ms, 1s or 2m is required")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a duration; write it like 50ms, 1s or 2m")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError("a duration such as 50ms, 1s or 2m is required")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000, 3):g}ms"


#: A pydantic field type: accepts "50ms"-style strings, holds float seconds.
Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
