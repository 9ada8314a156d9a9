"""Unix socket paths: checked with messages that name what is in the way, and taken over
without a moment in which the path refuses connections.

A worker never binds its path directly. It binds a private name in the same directory,
starts serving, then renames that over the path (one atomic step): a connection to the path
reaches either the old socket or the new one, never nothing. So a worker replacing a
crashed one, or a recycled one still draining, takes the path over while Envoy keeps
connecting to it. It also keeps grpc from unlinking the path when a worker stops (grpc
removes the name it bound, which by then is gone): a stopping worker removes the path only
if it is still its own socket.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
from pathlib import Path

#: Longest path a Unix socket address holds on Linux (sun_path, less the final NUL).
MAX_PATH = 107

_binds = itertools.count()


def path_of(address: str) -> Path:
    return Path(address[len("unix:") :])


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "not a socket"


def check(address: str) -> Path:
    """The socket path of `address`, its directory made if missing; OSError saying which
    path is in the way otherwise (a parent that is a file, the path itself a file)."""
    path = path_of(address)
    if len(os.fsencode(path)) > MAX_PATH:
        raise OSError(
            f"cannot listen on {address}: the path is {len(os.fsencode(path))} bytes, "
            f"a Unix socket path holds at most {MAX_PATH}"
        )
    for parent in reversed(path.parents):
        try:
            mode = os.stat(parent).st_mode
        except FileNotFoundError:
            break
        except OSError as exc:
            raise OSError(f"cannot listen on {address}: {parent}: {exc.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise OSError(f"cannot listen on {address}: {parent} is {_kind(mode)}, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot listen on {address}: cannot make the directory {path.parent}: {exc.strerror}"
        ) from None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise OSError(f"cannot listen on {address}: {path} is {_kind(mode)}, not a socket")
    return path


def in_use(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def private_name(path: Path) -> Path:
    """Where this process binds before taking `path` over: the same directory (rename is
    atomic there), a name no longer than needed (socket paths are short)."""
    return path.with_name(f".asm-{os.getpid()}-{next(_binds)}")


def take_over(bound: Path, path: Path) -> int:
    """Put the socket bound at `bound` at `path` (replacing whatever socket was there) and
    return its inode, by which `release` recognises it later."""
    os.rename(bound, path)
    return os.stat(path).st_ino


def release(path: Path, inode: int) -> None:
    """Remove `path` if it is still the socket with `inode` (not a successor's)."""
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
