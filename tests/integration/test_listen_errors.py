"""`asm-proxy serve` refuses an address it cannot use with one line saying what is in the
way, not a traceback: a Unix socket path under a regular file, a path that is a file, a
path too long for a socket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def serve(tmp_path: Path, listen: str, workers: int = 2) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "asm.yaml"
    config.write_text("plugins: []\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "asm_proxy",
            "serve",
            "-c",
            str(config),
            "--listen",
            listen,
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_socket_under_a_regular_file(tmp_path: Path, workers: int) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    done = serve(tmp_path, f"unix:{tmp_path}/file/sub/asm.sock", workers)
    suffix = ".0" if workers > 1 else ""
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"asm-proxy: cannot listen on unix:{tmp_path}/file/sub/asm.sock{suffix}: "
        f"{tmp_path}/file is a regular file, not a directory"
    )


def test_socket_path_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "asm.sock").write_text("someone's file\n")
    done = serve(tmp_path, f"unix:{tmp_path}/asm.sock", 1)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"asm-proxy: cannot listen on unix:{tmp_path}/asm.sock: "
        f"{tmp_path}/asm.sock is a regular file, not a socket"
    )
    assert (tmp_path / "asm.sock").read_text() == "someone's file\n"  # left alone


def test_socket_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 60) / ("s" * 60)
    done = serve(tmp_path, f"unix:{path}", 1)
    assert done.returncode == 1
    assert "a Unix socket path holds at most 107" in done.stderr
    assert "Traceback" not in done.stderr
