"""Sizes written the way Kubernetes writes them: "512Mi", "1Gi", "300M", or bytes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?\s*$")
_UNIT = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def parse_size(value: Any) -> int:
    """Bytes, from "512Mi" / "1Gi" / "300M" / "1048576" or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size such as 512Mi, 1Gi or 300M is required")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _UNIT[m.group(2)])
    else:
        raise ValueError(f"{value!r} is not a size; write it like 512Mi, 1Gi or 300M")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


#: A pydantic field type: accepts "512Mi"-style strings, holds bytes.
Size = Annotated[int, BeforeValidator(parse_size)]
