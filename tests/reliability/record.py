"""Where the drills' figures go: measured and kept, never asserted.

`scripts/reliability` writes the full run to results/last-run.json (docs/RELIABILITY.md
quotes it). The short drills of the default suite assert what is guaranteed (nothing lost,
the right answers, the promised deadlines) and write what they measured on the way (how
long a drain took, how many requests a second the load reached) to
results/suite/TEST.json, one file per test, overwritten by the next run and not committed:
on a shared machine those figures are worth reading, not judging.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SUITE = RESULTS / "suite"


def plain(value: Any) -> Any:
    """`value` as JSON can hold it (dataclasses as dicts, tuples as lists)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def record(test: str, result: Any, directory: Path = SUITE) -> Path:
    """Write `result` (a drill's) as DIRECTORY/TEST.json; the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^\w.-]+", "_", test).strip("_") + ".json")
    document = {"recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "result": plain(result)}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
