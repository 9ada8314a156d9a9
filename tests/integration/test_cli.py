"""The command line: validate, the demo, serve refusing a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asm_proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_validate_good_and_bad(tmp_path: Path) -> None:
    """validate: exit 0 with a summary for a good file; exit 1 naming file, plugin, field."""
    demo = (ROOT / "asm_proxy/demo/config.yaml").read_text()
    (tmp_path / "hmac-secret").write_text("x" * 64)
    (tmp_path / "demo.yaml").write_text(demo.replace("@DIR@", str(tmp_path)))
    good = run("validate", str(tmp_path / "demo.yaml"))
    assert good.returncode == 0, good.stderr
    assert "ok, 7 plugin(s)" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins:\n  - name: a\n    type: headers\n    config: {request: {sett: {}}}\n")
    result = run("validate", str(bad))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"{bad}:4: plugin plugins[0] \"a\": field 'config.request.sett': unknown field"
    )


def test_plugins_lists_the_builtins() -> None:
    """plugins: every built-in type with the class behind it."""
    result = run("plugins")
    assert result.returncode == 0
    names = {line.split()[0] for line in result.stdout.splitlines()}
    assert {"headers", "direct_response", "nacos", "reverse_dns", "body_log", "auth"} <= names


def test_serve_refuses_a_bad_file(tmp_path: Path) -> None:
    """serve exits 1 with the same messages as validate."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins: [{name: a, type: nope}]\n")
    result = run("serve", "--config", str(bad), timeout=30)
    assert result.returncode == 1
    assert "unknown plugin type 'nope'" in result.stderr


def test_demo_check() -> None:
    """The demo starts Envoy, asm-proxy and the upstream, and its requests behave."""
    result = run("demo", "--check", "--port", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo check passed" in result.stdout
    assert "x-served-by: asm-proxy" in result.stdout


def test_empty_file_is_refused_by_validate_and_serve(tmp_path: Path) -> None:
    """An empty or comment-only file is an error for validate and serve alike (never "ok, 0
    plugins"), naming the file and how to ask for no plugins."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    expected = (
        f"{empty}: the file is empty (nothing but whitespace or comments): a config must "
        "list its plugins; to run with none, write `plugins: []`"
    )
    validated = run("validate", str(empty))
    assert (validated.returncode, validated.stderr.strip()) == (1, expected)
    served = run("serve", "--config", str(empty), "--listen", "127.0.0.1:0", timeout=30)
    assert (served.returncode, served.stderr.strip()) == (1, expected)
    none = tmp_path / "none.yaml"
    none.write_text("plugins: []\n")
    assert run("validate", str(none)).stdout == f"{none}: ok, 0 plugin(s)\n"
