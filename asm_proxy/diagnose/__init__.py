"""`asm-proxy diagnose`: what is wrong with a config, alone or against the Envoy calling it.

    asm-proxy diagnose --config asm-proxy.yaml [--envoy-config FILE ... | --envoy-admin URL]
                       [--format text|json]

Each finding has a severity (info, warning, error), the check that found it, the plugin it
concerns and a hint; the exit code is the worst severity found (0 none or info, 1 a warning,
2 an error), so CI can gate on it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from asm_proxy.diagnose.checks import Finding, Severity, run
from asm_proxy.diagnose.envoy_side import EnvoySide, envoy_side
from asm_proxy.namespaces import load_all


def read_envoy_files(paths: list[str]) -> EnvoySide:
    """Envoy configs as files: YAML or JSON, one or several documents each."""
    documents: list[Any] = []
    for path in paths:
        documents += [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    return envoy_side(*documents)


def read_envoy_admin(url: str, timeout: float = 5.0) -> EnvoySide:
    """A running Envoy's config, from its admin `/config_dump` (include_eds not needed)."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/config_dump", timeout=timeout) as reply:
        return envoy_side(json.loads(reply.read()))


def diagnose(
    config: str | Path, envoy: EnvoySide | None = None, namespace_dir: str | Path | None = None
) -> list[Finding]:
    return run(load_all(config, namespace_dir), envoy)


def worst(findings: list[Finding]) -> int:
    """The exit code: 0 (nothing, or only info), 1 (a warning), 2 (an error)."""
    return max((int(f.severity) for f in findings), default=0)


def format_text(findings: list[Finding]) -> str:
    if not findings:
        return "no problems found\n"
    lines = []
    for f in findings:
        where = f" [{f.plugin}]" if f.plugin else ""
        lines.append(f"{f.severity.name.lower()}: {f.check}{where}: {f.message}")
        if f.hint:
            lines.append(f"    hint: {f.hint}")
    return "\n".join(lines) + "\n"


def format_json(findings: list[Finding]) -> str:
    return orjson.dumps([f.as_dict() for f in findings], option=orjson.OPT_INDENT_2).decode() + "\n"


__all__ = [
    "Finding",
    "Severity",
    "diagnose",
    "format_json",
    "format_text",
    "read_envoy_admin",
    "read_envoy_files",
    "worst",
]
