"""docs/PLUGINS.md stays true: included files match, and the runnable examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "PLUGINS.md").read_text()
BLOCK = re.compile(r"<!-- (include: (?P<path>\S+)|run) -->\n```python\n(?P<code>.*?)```", re.S)


def blocks(kind: str) -> list[re.Match[str]]:
    return [m for m in BLOCK.finditer(DOC) if (m.group("path") is not None) == (kind == "include")]


@pytest.mark.parametrize("match", blocks("include"), ids=lambda m: m.group("path"))
def test_included_files_match(match: re.Match[str]) -> None:
    """A file shown in the docs is shown exactly as it is."""
    assert match.group("code") == (ROOT / match.group("path")).read_text()


CONFIG = re.compile(r"<!-- config -->\n```yaml\n(?P<code>.*?)```", re.S)


@pytest.mark.parametrize("text", [m.group("code") for m in CONFIG.finditer(DOC)])
def test_example_configs_load(text: str) -> None:
    """Every config shown for a built-in plugin is valid and builds its plugin."""
    from asm_proxy.config import parse_file
    from asm_proxy.loader import build_chain

    chain = build_chain(parse_file("docs/PLUGINS.md", text))
    assert chain.entries


def test_runnable_examples_run() -> None:
    """The example plugin and its test, executed as written."""
    runnable = blocks("run")
    assert len(runnable) >= 2
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for match in runnable:
        exec(compile(match.group("code"), "docs/PLUGINS.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert tests
    for fn in tests:
        fn()
