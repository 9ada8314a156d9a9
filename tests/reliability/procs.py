"""Looking at processes from outside, as an operator would: which workers exist (even after
their supervisor is gone and they were re-parented), how much memory they hold, when they
are gone."""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def _cmdline(pid: int) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone: it serves nothing)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def workers(marker: str) -> list[int]:
    """Live asm-proxy worker processes whose command line contains `marker` (a listen
    address unique to the test), whoever their parent is now."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmdline = _cmdline(pid)
        if b"asm_proxy.worker" in cmdline and marker.encode() in cmdline and alive(pid):
            found.append(pid)
    return sorted(found)


def rss(pid: int) -> int:
    """Resident set size in bytes (0 if gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
